"""A converted file whose header or tensors disagree is refused before any kernel runs."""

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from edgewise.errors import EdgewiseError
from edgewise.rwkv import RWKV


@pytest.fixture(scope="module")
def converted_int8(checkpoints, tmp_path_factory):
    return RWKV.load(checkpoints["small"], quant="int8").save(tmp_path_factory.mktemp("conv") / "m.safetensors")


def _edited(path, tmp_path, edit):
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(tmp_path / "edited.safetensors"))
    return tmp_path / "edited.safetensors"


def _header(index, value):
    def edit(tensors):
        header = tensors["edgewise-rwkv7"].clone()
        header[index] = value
        tensors["edgewise-rwkv7"] = header
    return edit


@pytest.mark.parametrize("edit, message", [
    (_header(5, 64), "the header says"),                     # ffn: the C step wrote past its buffers
    (_header(2, 64), "the header says"),                     # heads: the C step wrote past its buffers
    (_header(2, 3), "heads do not divide the width"),
    (_header(2, 1), "the header says"),                      # heads that divide, with the wrong head size
    (_header(1, 256), "the header says"),                    # width
    (_header(4, 10**6), "the header says"),                  # vocab: logits past the head
    (_header(6, 3), "expected 8 int64 values with 0, 4 or 8 bits"),
    (lambda t: t.update({"blocks.0.att.key.weight.q8": t["blocks.0.att.key.weight.q8"][:-1].clone()}),
     "blocks.0.att.key.weight.q8 is"),                       # a cut matrix
    (lambda t: t.update({"head.weight.scale": t["head.weight.scale"][:-3].clone()}), "head.weight.scale is"),
    (lambda t: t.pop("blocks.1.att.v0"), "tensor blocks.1.att.v0 is missing"),
    (lambda t: t.update({"blocks.x.ln1.weight": t["ln_out.weight"].clone()}), "has no layer number"),
    (lambda t: t.update({"emb.q8": t["emb.q8"].float()}), "emb.q8 is"),
])
def test_inconsistent_converted_files_are_refused(converted_int8, tmp_path, edit, message):
    with pytest.raises(EdgewiseError, match=message):
        RWKV.load(_edited(converted_int8, tmp_path, edit))


def test_an_intact_converted_file_loads_and_runs(converted_int8):
    model = RWKV.load(converted_int8)
    logits, _ = model.forward([1, 2, 3])
    assert np.isfinite(logits).all() and logits.shape == (model.dims.vocab,)


@pytest.mark.parametrize("padding", [1, 2])
def test_tensors_at_odd_offsets_are_realigned_before_c_reads_them(converted_int8, tmp_path, padding):
    """A header padded by a byte or two leaves every tensor misaligned in the mapped file (found by
    tests/fuzzing.py under UBSan): the model still loads and decodes the same."""
    import json
    import struct

    data = converted_int8.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = data[8:8 + length] + b" " * padding   # safetensors allows trailing spaces in its header
    (tmp_path / "odd.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + data[8 + length:])
    assert json.loads(header)   # still a valid header
    expected, _ = RWKV.load(converted_int8).forward([1, 2, 3], use_cache=False)
    got, _ = RWKV.load(tmp_path / "odd.safetensors").forward([1, 2, 3], use_cache=False)
    assert np.array_equal(got, expected)
