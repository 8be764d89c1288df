import platform
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from edgewise.compression import quantize
from edgewise.compression.sensitivity import score_onnx
from edgewise.errors import EdgewiseError
from edgewise.runtime import onnx as onnx_runtime


def ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_int8_static_per_channel_keeps_accuracy(tmp_path, image_task):
    src, _ = onnx_runtime.export_task(image_task, tmp_path / "fp32.onnx")
    baseline = score_onnx(image_task, src)
    for method in ("minmax", "percentile", "entropy"):
        dst = quantize.int8_static(src, tmp_path / f"{method}.onnx", image_task.calibration, method=method)
        assert "QuantizeLinear" in ops(dst)
        assert score_onnx(image_task, dst) >= baseline - 0.05
    assert onnx_runtime.size_bytes(dst) < onnx_runtime.size_bytes(src) / 2.5


_EVALUATE = """
import sys, numpy as np, onnxruntime as ort
data = np.load(sys.argv[2])
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
print(float((sess.run(None, {sess.get_inputs()[0].name: data["x"]})[0].argmax(1) == data["y"]).mean()))
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates an x86-64 CPU")
@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_int8_keeps_accuracy_on_a_cpu_without_vnni(tmp_path, image_task, kind):
    """Under qemu as a Haswell (AVX2 + FMA, no AVX-512, no VNNI), ONNX Runtime takes its AVX2
    integer kernels, whatever CPU runs the tests."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.skip("qemu-x86_64 is missing: apt-get install qemu-user (make test installs it)")
    src, _ = onnx_runtime.export_task(image_task, tmp_path / "fp32.onnx")
    dst = (quantize.int8_static(src, tmp_path / "int8.onnx", image_task.calibration) if kind == "static"
           else quantize.int8_dynamic(src, tmp_path / "int8.onnx"))
    x, y = image_task.eval
    np.savez(tmp_path / "eval.npz", x=x, y=y)
    script = tmp_path / "evaluate.py"
    script.write_text(_EVALUATE)
    accuracy = {}
    for path in (src, dst):
        done = subprocess.run([qemu, "-cpu", "Haswell", sys.executable, str(script), str(path), str(tmp_path / "eval.npz")],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        accuracy[path] = float(done.stdout.split()[-1])
    assert accuracy[src] == score_onnx(image_task, src)      # the emulated CPU computes float alike
    assert accuracy[dst] >= accuracy[src] - 0.05, accuracy   # U8S8 lost 15 points here: VPMADDUBSW saturates


def test_per_channel_scales_are_per_output_channel(tmp_path, image_task):
    src, _ = onnx_runtime.export_task(image_task, tmp_path / "fp32.onnx")
    per_channel = quantize.int8_static(src, tmp_path / "pc.onnx", image_task.calibration)
    per_tensor = quantize.int8_static(src, tmp_path / "pt.onnx", image_task.calibration, per_channel=False)
    scale_sizes = lambda p: sorted(int(np.prod(i.dims)) for i in onnx.load(str(p)).graph.initializer  # noqa: E731
                                   if i.name.endswith("_scale"))
    assert max(scale_sizes(per_channel)) == 32 and max(scale_sizes(per_tensor)) == 1


def test_calibration_streams_only_the_samples_asked_for(tmp_path, image_task):
    src, _ = onnx_runtime.export_task(image_task, tmp_path / "fp32.onnx")
    reader = quantize._StreamingReader(image_task.train, onnx_runtime.session(src), samples=50, batch_size=16)
    assert len(reader) == 4  # 16 + 16 + 16 + 2
    reader.set_range(0, 4)
    sizes = []
    while (feed := reader.get_next()) is not None:
        sizes.append(len(next(iter(feed.values()))))
    assert sizes == [16, 16, 16, 2]


def test_dynamic_and_weight_only_on_matmuls(tmp_path, encoder_task):
    src, _ = onnx_runtime.export_task(encoder_task, tmp_path / "fp32.onnx")
    dynamic = quantize.int8_dynamic(src, tmp_path / "dyn.onnx")
    assert "MatMulInteger" in ops(dynamic) or "DynamicQuantizeMatMul" in ops(dynamic)
    int4 = quantize.weight_only(src, tmp_path / "int4.onnx", bits=4, block_size=32)
    int8 = quantize.weight_only(src, tmp_path / "int8w.onnx", bits=8, block_size=32)
    assert ops(int4).count("MatMulNBits") == 5
    assert score_onnx(encoder_task, int8) > score_onnx(encoder_task, int4) > 0.98
    assert onnx_runtime.size_bytes(int4) < onnx_runtime.size_bytes(int8) < onnx_runtime.size_bytes(src)


def test_user_errors_are_named(tmp_path, image_task):
    src, _ = onnx_runtime.export_task(image_task, tmp_path / "fp32.onnx")
    with pytest.raises(EdgewiseError, match="unknown calibration method 'kl'"):
        quantize.int8_static(src, tmp_path / "x.onnx", image_task.calibration, method="kl")
    with pytest.raises(EdgewiseError, match="needs calibration data"):
        quantize.int8_static(src, tmp_path / "x.onnx", None)
    with pytest.raises(EdgewiseError, match="no MatMul with constant weights"):
        quantize.weight_only(src, tmp_path / "x.onnx")
    with pytest.raises(EdgewiseError, match="group size 48"):
        quantize.weight_only(src, tmp_path / "x.onnx", block_size=48)
    assert not (tmp_path / "x.onnx").exists()
