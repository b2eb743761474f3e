"""The PEFT-style custom-model matrix: gradients, training, merging, disabling, reporting."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from conftest import MLP, Case, make_model, run
from torch import nn

from manifold_lowrank.adapters import (
    AdaptedLinear,
    AdaptedModel,
    AdapterConfig,
    get_adapter_model,
    get_peft_model,
    mark_only_adapters_as_trainable,
)
from manifold_lowrank.nn.adapters import LowRankAdapter, TuckerConv2dAdapter
from manifold_lowrank.nn.base import LowRankModule, TuckerModule
from manifold_lowrank.optim import GeoLoRA

ATOL = 1e-5


def adapt(case: Case, seed: int = 0, **over) -> tuple[nn.Module, AdaptedModel]:
    base = make_model(case, seed)
    reference = make_model(case, seed)
    cfg = AdapterConfig(**{"r": 4, "max_rank": 8, "tau": 0.2, **case.config, **over})
    return reference, get_adapter_model(base, cfg)


def train(adapted: AdaptedModel, case: Case, steps: int = 3, lr: float = 0.5) -> GeoLoRA:
    """A few GeoLoRA steps on the adapters and SGD on the other trainable parameters."""
    adapted.train()
    opt = GeoLoRA(adapted, lr=lr, tau=0.2, max_rank=8, precondition="layer_rms")
    head = adapted.non_adapter_trainable_parameters()
    sgd = torch.optim.SGD(head, lr=0.5) if head else None
    g = torch.Generator().manual_seed(1)
    inputs = case.inputs()
    w = None
    for _ in range(steps):
        out = run(adapted, inputs)
        if w is None:
            w = torch.randn(out.shape, generator=g)
        (out * w).sum().backward()
        opt.step()
        if sgd is not None:
            sgd.step()
            sgd.zero_grad()
        opt.zero_grad()
    adapted.eval()
    return opt


def _adapter_names(adapted: AdaptedModel) -> set[str]:
    out = set()
    for n, p in adapted.named_parameters():
        if p.requires_grad:
            out.add(n)
    return out


def test_initial_output_equals_base_and_trainable_format(case, capsys):
    reference, adapted = adapt(case)
    inputs = case.inputs()
    assert torch.allclose(run(adapted, inputs), run(reference, inputs), atol=0, rtol=0)
    adapted.print_trainable_parameters()
    line = capsys.readouterr().out.strip()
    m = re.fullmatch(
        r"trainable params: ([\d,]+) \|\| all params: ([\d,]+) \|\| trainable%: (\d+\.\d{4})", line
    )
    assert m is not None, line
    trainable, total = adapted.get_nb_trainable_parameters()
    assert m.group(1) == f"{trainable:,d}" and m.group(2) == f"{total:,d}"
    assert trainable == sum(p.numel() for p in adapted.parameters() if p.requires_grad)


def test_only_adapter_parameters_get_gradients_and_change(case):
    _, adapted = adapt(case)
    layers = adapted.adapter_layers()
    assert layers and all(isinstance(m, (LowRankModule, TuckerModule)) for m in layers.values())
    adapter_ids = {id(p) for p in adapted.adapter_parameters()}
    head_ids = {id(p) for p in adapted.non_adapter_trainable_parameters()}
    frozen_before = {
        n: p.detach().clone()
        for n, p in adapted.named_parameters()
        if id(p) not in adapter_ids | head_ids
    }
    deltas_before = {n: m.delta_weight().clone() for n, m in layers.items()}
    head_before = [p.detach().clone() for p in adapted.non_adapter_trainable_parameters()]
    # gradients after one backward: exactly the adapters and modules_to_save
    out = run(adapted, case.inputs())
    out.float().pow(2).mean().backward()
    with_grad = {id(p) for p in adapted.parameters() if p.grad is not None}
    assert with_grad <= adapter_ids | head_ids
    assert adapter_ids <= with_grad
    adapted.zero_grad(set_to_none=True)
    train(adapted, case)
    for n, p in adapted.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n
    for n, m in layers.items():
        assert not torch.equal(m.delta_weight(), deltas_before[n]), n
    for p, q in zip(adapted.non_adapter_trainable_parameters(), head_before):
        assert not torch.equal(p, q)


def test_merged_unmerged_and_merge_and_unload_agree(case):
    reference, adapted = adapt(case)
    train(adapted, case)
    inputs = case.inputs()
    base_out = run(reference, inputs)
    out = run(adapted, inputs)
    assert not torch.allclose(out, base_out, atol=1e-4)  # training did something
    adapted.merge_adapter()
    assert all(m.merged for m in adapted.adapter_layers().values())
    assert torch.allclose(run(adapted, inputs), out, atol=ATOL)
    adapted.unmerge_adapter()
    assert torch.allclose(run(adapted, inputs), out, atol=ATOL)
    plain = adapted.merge_and_unload()
    assert not any(isinstance(m, (LowRankModule, TuckerModule)) for m in plain.modules())
    assert torch.allclose(run(plain, inputs), out, atol=ATOL)
    with pytest.raises(RuntimeError, match="unloaded"):
        run(adapted, inputs)


def test_disable_adapter_gives_the_base_model(case):
    reference, adapted = adapt(case)
    train(adapted, case)
    inputs = case.inputs()
    out = run(adapted, inputs)
    base_out = run(reference, inputs)
    with adapted.disable_adapter():
        assert torch.allclose(run(adapted, inputs), base_out, atol=ATOL)
    assert torch.allclose(run(adapted, inputs), out, atol=ATOL)
    adapted.merge_adapter()
    with adapted.disable_adapter():
        assert torch.allclose(run(adapted, inputs), base_out, atol=ATOL)
    assert all(m.merged for m in adapted.adapter_layers().values())
    assert torch.allclose(run(adapted, inputs), out, atol=ATOL)


def test_unload_restores_the_base_weights(case):
    reference, adapted = adapt(case)
    train(adapted, case)
    adapted.merge_adapter()
    plain = adapted.unload()
    ref_sd = reference.state_dict()
    mts = set(adapted.modules_to_save_names)
    for k, v in plain.state_dict().items():
        if any(k.startswith(m + ".") for m in mts):
            continue
        assert torch.allclose(v.float(), ref_sd[k].float(), atol=1e-6), k


def test_rank_report_and_summary(case, capsys):
    _, adapted = adapt(case)
    opt = train(adapted, case)
    rows = adapted.rank_report()
    assert [r["name"] for r in rows] == adapted.targeted_module_names
    assert {r["name"]: r["rank"] for r in rows} == adapted.rank_pattern() == opt.ranks()
    assert sum(r["params"] for r in rows) == adapted.num_adapter_parameters()
    for r in rows:
        ranks = r["rank"] if isinstance(r["rank"], tuple) else (r["rank"],)
        caps = r["max_rank"] if isinstance(r["max_rank"], tuple) else (r["max_rank"],)
        assert all(0 <= a <= b for a, b in zip(ranks, caps))
    adapted.print_rank_summary()
    text = capsys.readouterr().out
    assert f"{len(rows)} adapters" in text


# ----------------------------------------------------------------------------- specifics
def test_targeted_names_and_config_semantics():
    torch.manual_seed(0)
    adapted = get_peft_model(MLP(), AdapterConfig(r=2, target_modules=["lin0"]))
    assert adapted.targeted_module_names == ["lin0"]
    assert isinstance(adapted.get_base_model().lin0, LowRankAdapter)
    assert adapted.lin0 is adapted.get_base_model().lin0  # attribute passthrough
    # rank_pattern (PEFT's key matching) and clipping to min(out, in)
    adapted = get_adapter_model(
        MLP(), AdapterConfig(r=8, target_modules=r"lin\d", rank_pattern={"lin1": 1})
    )
    assert adapted.rank_pattern() == {"lin0": 8, "lin1": 1}
    adapted = get_adapter_model(MLP(), AdapterConfig(r=16, max_rank=16, target_modules=["lin1"]))
    assert adapted.rank_pattern() == {"lin1": 2}


def test_tucker_conv_config():
    from conftest import ConvNet

    torch.manual_seed(0)
    adapted = get_adapter_model(
        ConvNet(), AdapterConfig(r=3, target_modules=["conv2d"], conv_format="tucker")
    )
    layer = adapted.adapter_layers()["conv2d"]
    assert isinstance(layer, TuckerConv2dAdapter)
    assert layer.ranks == (3, 3, 3, 3)


def test_bad_target_modules_list_candidates():
    with pytest.raises(ValueError, match=r"matched no module.*Candidate modules.*lin0"):
        get_adapter_model(MLP(), AdapterConfig(target_modules=["query"]))
    with pytest.raises(ValueError, match="not set"):
        get_adapter_model(MLP(), AdapterConfig())


def test_unsupported_layer_type_is_a_clear_error():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match=r"unsupported type: '0' \(Embedding\).*Supported"):
        get_adapter_model(model, AdapterConfig(target_modules=["0", "1"]))
    assert isinstance(model[1], nn.Linear)  # nothing injected
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="modules_to_save"):
        get_adapter_model(MLP(), AdapterConfig(target_modules=["lin0"], modules_to_save=["head"]))


def test_config_validation_and_json_round_trip(tmp_path):
    for kwargs, match in [
        ({"method": "nope"}, "method"),
        ({"r": -1}, "r must"),
        ({"r": 40, "max_rank": 32}, r"r \(40\)"),
        ({"tau": 1.5}, "tau"),
        ({"dropout": 1.0}, "dropout"),
        ({"conv_format": "cp"}, "conv_format"),
        ({"bias": "all"}, "bias"),
    ]:
        with pytest.raises(ValueError, match=match):
            AdapterConfig(**kwargs)
    with pytest.raises(TypeError, match="target_modules"):
        AdapterConfig(target_modules=[1, 2])
    cfg = AdapterConfig(r=3, target_modules=["a", "b"], modules_to_save=["c"], tau=0.15)
    cfg.save_pretrained(tmp_path)
    assert AdapterConfig.from_pretrained(tmp_path) == cfg
    assert "tau" in AdapterConfig.help()


def test_loralib_style_layer_api():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = AdaptedLinear(6, 8, rank=2, max_rank=6)
            self.fc2 = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.tanh(self.fc1(x)))

    net = Net()
    mark_only_adapters_as_trainable(net)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"fc1.adapter_U", "fc1.adapter_S", "fc1.adapter_V"}
    w0 = net.fc1.weight.detach().clone()
    opt = GeoLoRA(net, lr=0.1, tau=0.1)
    x = torch.randn(16, 6)
    y = torch.randint(0, 3, (16,))
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert torch.equal(net.fc1.weight, w0)


def test_importing_adapters_does_not_import_transformers():
    code = (
        "import sys, manifold_lowrank.adapters as a; "
        "assert 'transformers' not in sys.modules, 'transformers imported'; "
        "assert 'peft' not in sys.modules; print('ok')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
