"""Quantization on ONNX Runtime: int8 dynamic, int8 static (QDQ), weight-only int8/int4.

ORT's own quantization tools do the rewriting; edgewise streams the calibration data, picks the
per-channel defaults that keep accuracy, and verifies the result.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)

from edgewise.data import iter_batches
from edgewise.errors import EdgewiseError
from edgewise.files import atomic_path
from edgewise.runtime import onnx as onnx_runtime

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                       "entropy": CalibrationMethod.Entropy}
# Ops whose weights carry the model's size and compute: what the sensitivity loop visits.
WEIGHT_OPS = ("Conv", "MatMul", "Gemm", "Attention")
# Shape inference cannot type the outputs of ORT's fused contrib ops (Attention, SkipLayerNorm):
# they are float, which the quantizer must be told.
_FUSED_GRAPH_OPTIONS = {"DefaultTensorType": onnx.TensorProto.FLOAT}


class _StreamingReader(CalibrationDataReader):
    """Feeds calibration batches to ORT's calibrator one range at a time, never all at once."""

    def __init__(self, split: Any, sess: ort.InferenceSession, samples: int, batch_size: int) -> None:
        self.split, self.sess, self.samples, self.batch_size = split, sess, samples, batch_size
        self.batches = sum(1 for _ in self._iterate())
        if self.batches == 0:
            raise EdgewiseError("the calibration split is empty: give Task(calibration=(X,)) some samples")
        self._stream = self._iterate()
        self._remaining = 0

    def _iterate(self) -> Iterator[dict]:
        for inputs, _ in iter_batches(self.split, self.batch_size, limit=self.samples, where="calibration"):
            yield onnx_runtime.feed(self.sess, inputs)

    def __len__(self) -> int:
        return self.batches

    def set_range(self, start_index: int, end_index: int) -> None:
        # ORT asks for consecutive ranges; the stream simply continues.
        self._remaining = end_index - start_index

    def get_next(self) -> dict | None:
        if self._remaining <= 0:
            return None
        self._remaining -= 1
        return next(self._stream, None)


def _weight_nodes(path: str | Path) -> list[onnx.NodeProto]:
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    return [n for n in graph.node if n.op_type in WEIGHT_OPS and any(i in initializers for i in n.input)]


@contextlib.contextmanager
def _clean_copy(src: Path) -> Iterator[Path]:
    """`src` without stored value_info: shapes recorded by another exporter (torch's dynamo one
    among them) can contradict what the quantizer infers after rewriting, and make it fail."""
    model = onnx.load(str(src))
    if not model.graph.value_info:
        yield src
        return
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory(prefix="edgewise-q-") as tmp:
        path = Path(tmp) / "clean.onnx"
        onnx.save(model, str(path))
        yield path


def weight_nodes(path: str | Path) -> list[str]:
    """Names of the nodes with weights worth quantizing, in graph order."""
    return [n.name for n in _weight_nodes(path)]


def has_matmul_weights(path: str | Path) -> bool:
    """Whether weight-only (MatMulNBits) quantization has anything to work on."""
    return any(n.op_type == "MatMul" for n in _weight_nodes(path))


def int8_dynamic(src: Path, dst: Path, *, per_channel: bool = True, exclude: list[str] = (),
                 include: list[str] | None = None) -> Path:
    """Int8 weights, activations quantized at run time: no calibration data needed."""
    with atomic_path(dst) as tmp, _quiet(), _clean_copy(src) as src:
        quantize_dynamic(str(src), str(tmp), per_channel=per_channel, weight_type=QuantType.QInt8,
                         nodes_to_exclude=list(exclude), nodes_to_quantize=include,
                         extra_options={"MatMulConstBOnly": True, **_FUSED_GRAPH_OPTIONS})
    return dst


def ort_default_dynamic(src: Path, dst: Path) -> Path:
    """The peer: ORT's `quantize_dynamic` with its own defaults (per-tensor weights), told only
    that fused contrib-op outputs are float so that it runs on the same graph edgewise starts from."""
    with atomic_path(dst) as tmp, _quiet(), _clean_copy(src) as src:
        quantize_dynamic(str(src), str(tmp), extra_options=dict(_FUSED_GRAPH_OPTIONS))
    return dst


def int8_static(src: Path, dst: Path, calibration: Any, *, samples: int = 300, method: str = "minmax",
                per_channel: bool = True, exclude: list[str] = (), include: list[str] | None = None,
                batch_size: int = 16) -> Path:
    """Int8 QDQ model with activation ranges calibrated on `samples` of the calibration split.

    Calibration streams batch by batch (ORT's strided collection), so memory stays flat
    whatever the number of samples.
    """
    if method not in CALIBRATION_METHODS:
        raise EdgewiseError(f"unknown calibration method {method!r}: use one of {', '.join(CALIBRATION_METHODS)}")
    if calibration is None:
        raise EdgewiseError("int8 static needs calibration data: give Task(calibration=(X,)) or use int8-dynamic")
    reader = _StreamingReader(calibration, onnx_runtime.session(src, threads=None), samples, batch_size)
    with atomic_path(dst) as tmp, _quiet(), _clean_copy(src) as src:
        # Activations and weights int8 (S8S8). With uint8 activations (U8S8), x86 CPUs without VNNI
        # multiply with VPMADDUBSW, whose 16-bit sums saturate: a residual CNN that kept its
        # accuracy on AVX-512 VNNI lost 15 points on AVX2 (tests/compression/test_quantize.py runs
        # it under qemu as a Haswell). S8S8 kept it on both and measured as fast as U8S8 on VNNI;
        # U8U8 also kept it but ran 2x slower.
        quantize_static(str(src), str(tmp), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CALIBRATION_METHODS[method], nodes_to_exclude=list(exclude),
                        nodes_to_quantize=include,
                        extra_options={"CalibStridedMinMax": 1, **_FUSED_GRAPH_OPTIONS})
    return dst


def weight_only(src: Path, dst: Path, *, bits: int = 4, block_size: int = 32, exclude: list[str] = (),
                include: list[str] | None = None) -> Path:
    """Group-wise int4/int8 weights for MatMul (MatMulNBits), activations stay float.

    The kernels compute in int8 (accuracy_level 4), the fast path on AVX-512 VNNI.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if bits not in (4, 8):
        raise EdgewiseError(f"weight-only quantization takes 4 or 8 bits, not {bits}")
    if block_size not in (16, 32, 64, 128, 256):
        raise EdgewiseError(f"group size {block_size}: use 16, 32, 64, 128 or 256")
    model = onnx.load(str(src))
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                     accuracy_level=4, nodes_to_exclude=list(exclude),
                                     nodes_to_include=include)
    with _quiet():
        quantizer.process()
    if not any(n.op_type == "MatMulNBits" for n in quantizer.model.model.graph.node):
        raise EdgewiseError(f"int{bits}: the model has no MatMul with constant weights to quantize "
                            "(weight-only quantization is for linear layers of transformers and LLMs)")
    with atomic_path(dst) as tmp:
        onnx.save(quantizer.model.model, str(tmp))
    return dst


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence ORT's quantization tools, which print progress and log per-node chatter."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
