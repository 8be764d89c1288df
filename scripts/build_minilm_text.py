"""Build the real-text corpus of the minilm example from three human-written sources.

    apt-get install wordnet-base fortunes      # Debian's packages (main: free to redistribute)
    python scripts/build_minilm_text.py        # writes src/edgewise/examples/text/minilm-text.jsonl.gz

Sources, each split by document so that no document gives text to two splits:
- WordNet 3.0 usage examples ("the oceans are teeming with life"): everyday English across 45
  lexicographer files (noun.food, verb.motion ...), the document unit.
- BSD fortune files: quotations, jokes, dialogue, questions, definitions; the category file
  (science, food, kids, work ...) is the document unit.
- The Python reference's help topics (the standard library's pydoc_data): technical prose; the
  topic ("if", "exceptions" ...) is the document unit.
The output is deterministic for the same package versions.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sys
from pathlib import Path

WORDNET = Path("/usr/share/wordnet")
FORTUNES = Path("/usr/share/games/fortunes")
OUT = Path(__file__).resolve().parents[1] / "src/edgewise/examples/text/minilm-text.jsonl.gz"
LEXFILES = ["adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
            "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
            "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
            "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
            "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change",
            "verb.cognition", "verb.communication", "verb.competition", "verb.consumption", "verb.contact",
            "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social",
            "verb.stative", "verb.weather", "adj.ppl"]
# Files of pictures rather than prose, and two of jokes at groups' expense: left out.
SKIP_FORTUNES = {"art", "ascii-art", "ethnic", "men-women"}
SPLITS = (("train", 0.70), ("validation", 0.15), ("test", 0.15))


def wordnet() -> list[tuple[str, str]]:
    seen, found = set(), []
    for part in ("noun", "verb", "adj", "adv"):
        for line in (WORDNET / f"data.{part}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # the licence header
            lexfile = LEXFILES[int(line.split()[1])]
            for example in re.findall(r'"([^"]+)"', line.split("|", 1)[1]):
                text = example.strip()
                if len(text.split()) >= 4 and text not in seen:
                    seen.add(text)
                    found.append((lexfile, text))
    return found


def fortunes() -> list[tuple[str, str]]:
    found = []
    for path in sorted(FORTUNES.iterdir()):
        if path.suffix or path.name in SKIP_FORTUNES or not path.is_file():
            continue
        for entry in path.read_text(encoding="latin-1").split("\n%\n"):
            lines = entry.strip("\n").splitlines()
            if any(re.search(r"\S\t|\S {4,}\S", line) or re.search(r"[|_=#*]{3}", line) for line in lines):
                continue  # tables, pictures, columns: whitespace carries their meaning
            text = " ".join(" ".join(lines).split())
            letters = sum(c.isalpha() or c.isspace() for c in text)
            if 20 <= len(text) <= 600 and letters >= 0.85 * len(text):
                found.append((path.name, text))
    return found


def python_topics() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics
    found = []
    for name in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[name]):
            lines = paragraph.splitlines()
            if not lines or any(line.startswith((" ", "\t")) for line in lines) or re.fullmatch(r"[*=\-]+", lines[-1]):
                continue  # code, grammar and headings
            prose = " ".join(" ".join(lines).split())
            for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z\"])", prose):
                if 5 <= len(sentence.split()) <= 80 and sentence[-1] in ".?!:":
                    found.append((name, sentence))
    return found


def assign(source: str, documents: list[str]) -> dict[str, str]:
    """Documents to splits in an order fixed by their hashed names, ~70/15/15 by document count."""
    order = sorted(set(documents), key=lambda d: hashlib.sha256(f"{source}:{d}".encode()).hexdigest())
    split_of, start = {}, 0
    for index, (split, share) in enumerate(SPLITS):
        stop = len(order) if index == len(SPLITS) - 1 else start + max(1, round(share * len(order)))
        for document in order[start:stop]:
            split_of[document] = split
        start = stop
    return split_of


def main() -> int:
    missing = [str(p) for p in (WORDNET, FORTUNES) if not p.is_dir()]
    if missing:
        print(f"missing {', '.join(missing)}: apt-get install wordnet-base fortunes", file=sys.stderr)
        return 2
    rows = []
    for source, items in (("wordnet", wordnet()), ("fortunes", fortunes()), ("python-docs", python_topics())):
        split_of = assign(source, [document for document, _ in items])
        rows += [{"text": text, "source": source, "document": document, "split": split_of[document]}
                 for document, text in items]
    # A text found in several documents (a saying in two fortune files, a sentence that the
    # Python reference repeats) is kept once, in the first split of train, validation, test.
    first = {}
    for row in sorted(rows, key=lambda r: [s for s, _ in SPLITS].index(r["split"])):
        first.setdefault(row["text"].casefold(), row["split"])
    seen = set()
    rows = [r for r in rows if first[r["text"].casefold()] == r["split"]
            and not (r["text"].casefold() in seen or seen.add(r["text"].casefold()))]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    OUT.write_bytes(gzip.compress(payload, compresslevel=9, mtime=0))
    counts = {}
    for row in rows:
        key = (row["source"], row["split"])
        counts[key] = counts.get(key, 0) + 1
    for (source, split), count in sorted(counts.items()):
        print(f"{source:12s} {split:10s} {count:6d}")
    print(f"{OUT}: {OUT.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
