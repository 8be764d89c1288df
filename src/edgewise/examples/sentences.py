"""Sentences for the minilm example, generated from templates: varied, deterministic, offline."""

from __future__ import annotations

import random

_SUBJECTS = [
    "The engineer", "A nurse", "My neighbour", "The old fisherman", "Our team", "The pilot", "A student",
    "The city council", "The farmer", "A young musician", "The doctor", "The museum", "This startup",
    "The river", "A stray cat", "The train to Lyon", "The weather service", "My grandmother", "The robot",
    "The committee", "A small bakery", "The storm", "The library", "The referee", "The new phone",
]
_VERBS = [
    "repaired", "painted", "sold", "described", "ignored", "recommended", "measured", "delivered",
    "cancelled", "studied", "photographed", "approved", "borrowed", "designed", "criticised", "cleaned",
    "translated", "predicted", "celebrated", "lost", "found", "compared", "tested", "announced",
]
_OBJECTS = [
    "the broken bicycle", "a detailed report", "the quarterly budget", "an ancient map", "the wooden bridge",
    "a cheap laptop", "the hospital schedule", "a chocolate cake", "the football match", "an electric car",
    "the solar panels", "a long poem", "the tax rules", "the harbour lights", "a rare orchid",
    "the software update", "the vaccine results", "a jazz concert", "the mountain trail", "a wedding dress",
    "the election results", "the kitchen floor", "a heavy suitcase", "the night sky", "the village school",
]
_ENDINGS = [
    "before the sun went down.", "with great care.", "despite the heavy rain.", "for the third time this year.",
    "after a long discussion.", "without telling anyone.", "in less than an hour.", "to everyone's surprise.",
    "as the crowd watched.", "on a quiet Sunday morning.", "because nobody else would.", "near the old station.",
    "while drinking cold coffee.", "at the end of the meeting.", "during the winter holidays.", ".",
]
_QUESTIONS = [
    "How do I reset my password?", "What time does the pharmacy close?", "Where can I buy fresh bread?",
    "Is it going to snow tomorrow?", "Why is the sky blue?", "Which train goes to the airport?",
    "How much does a ticket cost?", "Can dogs eat grapes?", "Who wrote this novel?", "When was the bridge built?",
]


def generate(count: int, seed: int = 0) -> list[str]:
    """`count` distinct sentences: statements from templates, with questions mixed in."""
    rng = random.Random(seed)
    seen: set[str] = set()
    sentences: list[str] = []
    while len(sentences) < count:
        if rng.random() < 0.1:
            text = rng.choice(_QUESTIONS)
            text = text if rng.random() < 0.5 else f"{text[:-1]}, {rng.choice(_ENDINGS)[:-1]}?"
        else:
            ending = rng.choice(_ENDINGS)
            text = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
            text = text + "." if ending == "." else f"{text} {ending}"
        if text not in seen:
            seen.add(text)
            sentences.append(text)
    return sentences
