"""The RWKV World tokenizer (rwkv_vocab_v20230424): greedy longest match over UTF-8 bytes.

Encoding runs in pyrwkv-tokenizer's Rust code (tens of MB/s); decoding maps ids to bytes
here, so a token that ends inside a UTF-8 character can be streamed correctly.
"""

from __future__ import annotations

import ast
import codecs
from functools import lru_cache
from pathlib import Path

from edgewise.errors import EdgewiseError

END_OF_TEXT = 0


class WorldTokenizer:
    def __init__(self) -> None:
        from pyrwkv_tokenizer import RWKVTokenizer

        self._rust = RWKVTokenizer()
        self.id_to_bytes = _vocab(self._rust.vocab_filepath)
        self.vocab_size = 65536  # ids 1..65529 plus the end-of-text id 0, rounded as released models are

    def encode(self, text: str) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EdgewiseError(f"the text is not valid UTF-8 (position {exc.start}): "
                                "give UTF-8 text without lone surrogates or raw bytes") from None
        return list(self._rust.encode(text))

    def decode_bytes(self, tokens: list[int], strict: bool = True) -> bytes:
        """The bytes of `tokens`; an id no text maps to is an error, or (not `strict`, as for what a
        model sampled: a World vocabulary has a few ids past its last token) adds nothing."""
        if not strict:
            return b"".join(self.id_to_bytes.get(t, b"") for t in tokens)
        try:
            return b"".join(self.id_to_bytes[t] for t in tokens if t != END_OF_TEXT)
        except KeyError as exc:
            raise EdgewiseError(f"token id {exc.args[0]} is not in the World vocabulary") from None

    def decode(self, tokens: list[int], strict: bool = True) -> str:
        return self.decode_bytes(tokens, strict).decode("utf-8", errors="replace")

    def stream_decoder(self) -> codecs.IncrementalDecoder:
        """Feeds token bytes, returns text as soon as whole characters are complete."""
        return codecs.getincrementaldecoder("utf-8")(errors="replace")


@lru_cache(maxsize=1)
def _vocab(path: str) -> dict[int, bytes]:
    table = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        index = int(line[: line.index(" ")])
        literal = ast.literal_eval(line[line.index(" "): line.rindex(" ")])
        table[index] = literal.encode("utf-8") if isinstance(literal, str) else literal
    return table


@lru_cache(maxsize=1)
def world_tokenizer() -> WorldTokenizer:
    return WorldTokenizer()
