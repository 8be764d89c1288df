import numpy as np
import pytest
import torch

from edgewise.errors import EdgewiseError
from edgewise.load import load_onnx_task, load_task
from tests.conftest import tiny_classifier


@pytest.fixture
def foreign_onnx(tmp_path):
    """An ONNX file made by torch.onnx.export directly (the dynamo exporter), not by edgewise."""
    path = tmp_path / "foreign.onnx"
    torch.onnx.export(tiny_classifier(), (torch.zeros(1, 6),), str(path), input_names=["features"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True)
    return path


def test_npz_with_labels_gives_accuracy_and_without_gives_fidelity(tmp_path, foreign_onnx):
    x = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    np.savez(tmp_path / "labelled.npz", features=x, y=(x[:, 0] > 0).astype(np.int64))
    np.savez(tmp_path / "plain.npz", x=x)
    labelled = load_onnx_task(foreign_onnx, tmp_path / "labelled.npz")
    assert labelled.metric.name == "accuracy" and len(labelled.calibration[0]["features"]) == 20
    plain = load_onnx_task(foreign_onnx, tmp_path / "plain.npz")
    assert plain.metric.name == "cosine" and len(plain.eval[0]) == 20


@pytest.mark.parametrize("arrays, message", [
    ({}, "holds nothing, but foreign.onnx takes inputs ['features']"),
    ({"a": np.zeros((8, 6), np.float32), "b": np.zeros((8, 6), np.float32)}, "name the arrays after them"),
    ({"x": np.zeros((2, 6), np.float32)}, "2 samples; give at least 4"),
    ({"x": np.zeros((8, 6), np.float32), "y": np.zeros(5)}, "8 input samples but 5 labels"),
    ({"x": np.zeros((8, 6), np.float32), "y": np.array(3)}, "8 input samples but a scalar as labels"),
    ({"x": np.zeros((8, 6, 1), np.float32)}, "foreign.onnx fails on the first sample of bad.npz"),   # wrong rank
    ({"x": np.array([["a"] * 6] * 8)}, "foreign.onnx fails on the first sample of bad.npz"),        # strings
])
def test_bad_npz_is_named(tmp_path, foreign_onnx, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(EdgewiseError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_onnx_task(foreign_onnx, tmp_path / "bad.npz")


def test_pickled_or_corrupt_npz_is_refused(tmp_path, foreign_onnx):
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}] * 8, dtype=object))
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 broken")
    for name in ("objects.npz", "corrupt.npz"):
        with pytest.raises(EdgewiseError, match="not a readable .npz without pickles"):
            load_onnx_task(foreign_onnx, tmp_path / name)


def test_npz_declaring_a_huge_array_is_refused(tmp_path, foreign_onnx):
    import zipfile
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**12, 6)}   # 24 TB declared, 24 bytes given
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive, archive.open("x.npy", "w") as member:
        np.lib.format.write_array_header_2_0(member, header)
        member.write(np.zeros(6, np.float32).tobytes())
    with pytest.raises(EdgewiseError, match="not a readable .npz without pickles"):
        load_onnx_task(foreign_onnx, tmp_path / "huge.npz")


def test_an_already_quantized_model_is_refused(tmp_path, foreign_onnx):
    from edgewise.compression import quantize
    x = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
    np.savez(tmp_path / "data.npz", features=x)
    int8 = quantize.int8_static(foreign_onnx, tmp_path / "int8.onnx", (x,))
    with pytest.raises(EdgewiseError, match="already quantized .*QuantizeLinear.*give the float model"):
        load_onnx_task(int8, tmp_path / "data.npz")


def test_task_sources_are_exclusive():
    with pytest.raises(EdgewiseError, match="not several"):
        load_task(example="digits", onnx="m.onnx", data="d.npz")
    with pytest.raises(EdgewiseError, match="go together"):
        load_task(onnx="m.onnx")


def test_an_npz_compressed_by_an_unknown_method_is_named(tmp_path, foreign_onnx):
    """zipfile raises NotImplementedError for it (found by tests/fuzzing.py)."""
    np.savez(tmp_path / "d.npz", x=np.zeros((8, 6), np.float32))
    data = bytearray((tmp_path / "d.npz").read_bytes())
    for header in (b"PK\x03\x04", b"PK\x01\x02"):   # the method field of the local and the central header
        at = data.find(header)
        offset = 8 if header == b"PK\x03\x04" else 10
        data[at + offset:at + offset + 2] = (99).to_bytes(2, "little")
    (tmp_path / "d.npz").write_bytes(bytes(data))
    with pytest.raises(EdgewiseError, match="d.npz: not a readable .npz.*compression method"):
        load_onnx_task(foreign_onnx, tmp_path / "d.npz")


def test_an_npz_member_that_is_no_array_is_named(tmp_path, foreign_onnx):
    import zipfile   # np.load returns such a member as bytes (found by tests/fuzzing.py)
    np.savez(tmp_path / "d.npz", x=np.zeros((8, 6), np.float32))
    with zipfile.ZipFile(tmp_path / "d.npz", "a") as archive:
        archive.writestr("y", b"not an array")
    with pytest.raises(EdgewiseError, match="member 'y' is not a .npy array"):
        load_onnx_task(foreign_onnx, tmp_path / "d.npz")
