import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgewise.errors import EdgewiseError
from edgewise.rwkv.tokenizer import world_tokenizer

SAMPLES = ["Hello, world!", "def f(x):\n    return x ** 2\n", "你好，世界", "🎉 emoji 👩‍👩‍👧", "\x00\x01\t\r\n",
           "Ünïcödé çàfé", "  leading and trailing  ", ""]


def test_matches_the_reference_tokenizer():
    import rwkv
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER
    reference = TRIE_TOKENIZER(os.path.join(os.path.dirname(rwkv.__file__), "rwkv_vocab_v20230424.txt"))
    text = "".join(SAMPLES) + open(__file__, encoding="utf-8").read()
    assert world_tokenizer().encode(text) == reference.encode(text)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_exact_round_trip_on_any_text(text):
    tokenizer = world_tokenizer()
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_streaming_decoder_waits_for_whole_characters():
    tokenizer = world_tokenizer()
    decoder = tokenizer.stream_decoder()
    data = "é🎉".encode()
    pieces = [decoder.decode(data[i:i + 1]) for i in range(len(data))]
    assert "".join(pieces) == "é🎉" and pieces[0] == ""  # the first byte of é alone is not yet text


def test_invalid_text_is_refused():
    with pytest.raises(EdgewiseError, match="not valid UTF-8"):
        world_tokenizer().encode("bad \udcff byte")
    with pytest.raises(EdgewiseError, match="not in the World vocabulary"):
        world_tokenizer().decode_bytes([70000])
