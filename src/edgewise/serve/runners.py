"""What runs a resident model, one small interface per kind: an ONNX Runtime session (KServe v2),
a text encoder on top of one (/v1/embeddings) and the RWKV runtime with its state cache and batcher
(/v1/completions, /v1/chat/completions).

Every runner reports `extra_bytes` (memory it grows while serving, beyond what loading it measured)
and can `shrink` it; `close` releases it."""

from __future__ import annotations

import numpy as np

from edgewise.errors import EdgewiseError
from edgewise.rwkv.tokenizer import END_OF_TEXT
from edgewise.serve.catalog import ModelFile

# KServe v2 datatypes <-> numpy
DATATYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
             "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
             "FP32": np.float32, "FP64": np.float64}
_ORT_TYPES = {"tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
              "tensor(uint64)": "UINT64", "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
              "tensor(int64)": "INT64", "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64"}
EMBEDDING_MAX_TOKENS = 256   # a text encoder's longest input; longer texts are truncated (and say so in usage)


class OnnxRunner:
    """An ONNX Runtime session: named tensors in, named tensors out."""

    kind = "onnx"

    def __init__(self, model: ModelFile, threads: int | None = None) -> None:
        from edgewise.runtime.onnx import session

        self.model = model
        self.session = session(model.path / "model.onnx", threads, check=False)
        self.inputs = [(i.name, _ORT_TYPES.get(i.type, i.type), list(i.shape)) for i in self.session.get_inputs()]
        self.outputs = [(o.name, _ORT_TYPES.get(o.type, o.type), list(o.shape)) for o in self.session.get_outputs()]
        self._warm_up()

    def _warm_up(self) -> None:
        """One run on zeros, so that the arenas it allocates are inside the bytes the pool measures."""
        feeds = {name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in shape], DATATYPES[dtype])
                 for name, dtype, shape in self.inputs if dtype in DATATYPES}
        if len(feeds) == len(self.inputs):
            try:
                self.session.run(None, feeds)
            except Exception:   # a model whose dims must agree (e.g. ids and mask): the first request warms it
                pass

    def metadata(self) -> dict:
        def tensors(items):
            return [{"name": n, "datatype": t, "shape": [d if isinstance(d, int) and d > 0 else -1 for d in s]}
                    for n, t, s in items]
        return {"name": self.model.id, "versions": ["1"], "platform": "onnxruntime_onnx",
                "inputs": tensors(self.inputs), "outputs": tensors(self.outputs)}

    def infer(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        expected = {name: (dtype, shape) for name, dtype, shape in self.inputs}
        if set(feeds) != set(expected):
            raise EdgewiseError(f"model {self.model.id} takes inputs {sorted(expected)}, got {sorted(feeds)}")
        for name, array in feeds.items():
            dtype, shape = expected[name]
            if len(shape) != array.ndim or any(isinstance(d, int) and d > 0 and d != a for d, a in zip(shape, array.shape)):
                raise EdgewiseError(f"input {name}: shape {list(array.shape)} does not fit {shape}")
            if DATATYPES.get(dtype) is not None and array.dtype != DATATYPES[dtype]:
                raise EdgewiseError(f"input {name}: datatype must be {dtype}")
        names = [o[0] for o in self.outputs]
        unknown = [o for o in outputs or [] if o not in names]
        if unknown:
            raise EdgewiseError(f"model {self.model.id} has no output {unknown[0]!r}; it has {names}")
        try:
            values = self.session.run(outputs or names, feeds)
        except Exception as exc:
            raise EdgewiseError(f"model {self.model.id} could not run these inputs ({str(exc).splitlines()[0][:160]})"
                                ) from None
        return dict(zip(outputs or names, values))

    @property
    def nominal_bytes(self) -> int:
        return (self.model.path / "model.onnx").stat().st_size   # the weights ONNX Runtime holds

    def extra_bytes(self) -> int:
        return 0

    def shrink(self) -> int:
        return 0

    def close(self) -> None:
        self.session = None


class EmbeddingRunner(OnnxRunner):
    """A text encoder exported by edgewise (input_ids, attention_mask -> one vector per text), with
    the tokenizer.json its folder carries."""

    kind = "embedding"

    def __init__(self, model: ModelFile, threads: int | None = None) -> None:
        from tokenizers import Tokenizer

        super().__init__(model, threads)
        names = {name for name, _, _ in self.inputs}
        if not {"input_ids", "attention_mask"} <= names:
            raise EdgewiseError(f"{model.path}: a text encoder takes input_ids and attention_mask; this one takes "
                                f"{sorted(names)}")
        try:
            self.tokenizer = Tokenizer.from_file(str(model.path / "tokenizer.json"))
        except Exception as exc:
            raise EdgewiseError(f"{model.path / 'tokenizer.json'}: not a tokenizer ({str(exc)[:120]})") from None
        self.tokenizer.enable_truncation(EMBEDDING_MAX_TOKENS)
        self.tokenizer.enable_padding()   # to the longest text of the request

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Vectors [len(texts), D] float32 and the tokens read."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], np.int64)
        mask = np.array([e.attention_mask for e in encodings], np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        for name, _, _ in self.inputs:
            if name == "token_type_ids":
                feeds[name] = np.zeros_like(ids)
        vectors = next(iter(self.infer(feeds).values()))
        return vectors.astype(np.float32), int(mask.sum())


class RWKVRunner:
    """An RWKV-7 model, its World tokenizer, its cached conversation states and its batcher."""

    kind = "rwkv"

    def __init__(self, model: ModelFile, threads: int | None = None) -> None:
        import torch

        from edgewise.rwkv import RWKV
        from edgewise.rwkv.tokenizer import world_tokenizer
        from edgewise.serve.batching import Batcher, StateCache

        if threads:
            torch.set_num_threads(threads)
        self.model = RWKV.load(model.path)
        self.tokenizer = world_tokenizer()
        logits, state = self.model.forward([END_OF_TEXT], use_cache=False)   # builds the decode step
        self.model.forward([END_OF_TEXT], state, use_cache=False)
        self.cache = StateCache()
        self.batcher = Batcher(self.model, self.tokenizer, self.cache)
        # a stream's working memory beyond its state: its logits, the sampler's probabilities (float32)
        # and running sums (float64) over the vocabulary, and a copy of its state while the batch is rebuilt
        self.batcher.work_bytes = logits.nbytes * 4 + state.size_bytes
        self.batcher.stream_bytes = self.stream_bytes = self.batcher.work_bytes + state.size_bytes

    @property
    def nominal_bytes(self) -> int:
        return self.model.resident_bytes

    def submit(self, stream) -> None:
        self.batcher.submit(stream)

    def extra_bytes(self) -> int:
        return self.cache.bytes + self.batcher.batch_bytes

    def shrink(self) -> int:
        return self.cache.evict_one()

    def close(self) -> None:
        self.batcher.close()
        self.model = None


def open_runner(model: ModelFile, threads: int | None = None):
    """The runner of `model`'s kind, loaded."""
    runner = {"rwkv": RWKVRunner, "embedding": EmbeddingRunner, "onnx": OnnxRunner}[model.kind]
    return runner(model, threads)
