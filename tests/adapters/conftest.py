"""Tiny models for the adapter tests (PEFT's custom-model matrix, built offline)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class MLP(nn.Module):
    """PEFT's test MLP: lin0 10→20, ReLU, dropout, lin1 20→2, LogSoftmax."""

    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(10, 20)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.lin1 = nn.Linear(20, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.sm(self.lin1(self.drop(self.relu(self.lin0(X)))))


class ConvNet(nn.Module):
    """PEFT's test Conv2d model: Conv2d(5, 10, 3) then a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(5, 10, 3)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.lin0 = nn.Linear(10 * 3 * 3, 2)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.lin0(self.flat(self.relu(self.conv2d(X))))


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
    )
    return BertForSequenceClassification(cfg)


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2Model

    return GPT2Model(GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2, n_positions=16))


@dataclass
class Case:
    name: str
    make: Callable[[], nn.Module]
    inputs: Callable[[], dict[str, Any]]
    config: dict[str, Any]
    peft_exportable: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _mlp_inputs() -> dict[str, Any]:
    return {"X": torch.arange(90, dtype=torch.float32).view(9, 10) / 90.0}


def _conv_inputs() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {"X": torch.randn(4, 5, 5, 5, generator=g)}


def _bert_inputs() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(0, 100, (4, 8), generator=g),
        "attention_mask": torch.ones(4, 8, dtype=torch.long),
    }


def _gpt2_inputs() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, 100, (3, 6), generator=g)}


CASES = [
    Case("mlp-list", MLP, _mlp_inputs, {"target_modules": ["lin0"], "modules_to_save": ["lin1"]}),
    Case("mlp-regex", MLP, _mlp_inputs, {"target_modules": r"lin\d"}),
    Case("mlp-all-linear", MLP, _mlp_inputs, {"target_modules": "all-linear"}),
    Case(
        "conv-matrix",
        ConvNet,
        _conv_inputs,
        {"target_modules": ["conv2d"], "modules_to_save": ["lin0"]},
    ),
    Case(
        "conv-tucker",
        ConvNet,
        _conv_inputs,
        {"target_modules": ["conv2d", "lin0"], "conv_format": "tucker"},
    ),
    Case(
        "bert",
        tiny_bert,
        _bert_inputs,
        {
            "target_modules": ["query", "key", "value", "dense"],
            "exclude_modules": ["pooler.dense"],
            "task_type": "SEQ_CLS",
        },
    ),
    Case("gpt2-conv1d", tiny_gpt2, _gpt2_inputs, {"target_modules": ["c_attn", "c_proj"]}),
]


def run(model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    out = model(**inputs)
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    return out.last_hidden_state


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny matrices: one intra-op thread is fastest (and robust on a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


def make_model(case: Case, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return case.make().eval()
