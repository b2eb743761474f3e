"""Exact export to a standard PEFT LoRA checkpoint, loaded by ``peft.PeftModel``."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import MLP, make_model, run
from test_io import adapt_mlp
from test_model import adapt, train

from manifold_lowrank.manifolds.types import FixedRankPoint

peft = pytest.importorskip("peft")


def _load_in_peft(case_or_model, directory):
    return peft.PeftModel.from_pretrained(case_or_model, directory).eval()


def test_export_loads_in_peft_with_identical_outputs(case, tmp_path):
    _, adapted = adapt(case)
    train(adapted, case, steps=3)
    inputs = case.inputs()
    out = run(adapted, inputs)
    lora = adapted.export_to_peft(tmp_path)
    assert lora["peft_type"] == "LORA"
    # every scaling alpha/r is exactly 1
    for key, r in lora["rank_pattern"].items():
        assert lora["alpha_pattern"][key] == r
    cfg = peft.LoraConfig.from_pretrained(tmp_path)
    assert cfg.peft_type == peft.PeftType.LORA
    pm = _load_in_peft(make_model(case, seed=0), tmp_path)
    # PEFT built a LoRA layer of the right rank for exactly the exported modules
    got = {
        n.removeprefix("base_model.model."): m.r["default"]
        for n, m in pm.named_modules()
        if isinstance(m, peft.tuners.lora.LoraLayer)
    }
    want = {n: r for n, r in adapted.rank_pattern().items() if r and not isinstance(r, tuple)}
    want.update(
        {n: r[0] for n, r in adapted.rank_pattern().items() if isinstance(r, tuple) and 0 not in r}
    )
    assert got == want
    assert torch.allclose(run(pm, inputs), out, atol=1e-5, rtol=0)


def test_export_skips_rank_zero_layers(tmp_path):
    _, adapted = adapt_mlp()
    lin1 = adapted.adapter_layers()["lin1"]
    U, S, V = lin1.point()
    lin1.set_point(FixedRankPoint(U[:, :0], S[:0, :0], V[:, :0]))
    x = torch.randn(5, 10)
    out = adapted(x)
    lora = adapted.export_to_peft(tmp_path)
    assert set(lora["rank_pattern"]) == {"lin0"}
    torch.manual_seed(0)
    pm = _load_in_peft(MLP().eval(), tmp_path)
    assert torch.allclose(pm(x), out, atol=1e-6)
    tensors = json.loads((tmp_path / "adapter_config.json").read_text())
    assert tensors["r"] == 3


@pytest.mark.parametrize(
    ("targets", "names", "list_ok", "keys"),
    [
        # a target list ["0", "1.1"] would also make PEFT adapt "1.0": a regex is written
        (r"0|1\.1", ["0", "1.1"], False, {"0", "1.1"}),
        # rank_pattern key "0" would also match "1.0": the key is anchored
        (r"0|1\.0", ["0", "1.0"], True, {"^0", "1.0"}),
    ],
)
def test_ambiguous_names_are_exported_exactly(tmp_path, targets, names, list_ok, keys):
    from torch import nn

    from manifold_lowrank.adapters import AdapterConfig, get_adapter_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))).eval()
    ref = nn.Sequential(nn.Linear(6, 6), nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6)))
    ref.load_state_dict(model.state_dict())
    adapted = get_adapter_model(model, AdapterConfig(r=3, target_modules=targets))
    assert adapted.targeted_module_names == names
    g = torch.Generator().manual_seed(0)
    for i, layer in enumerate(adapted.adapter_layers().values()):
        U, _, V = layer.point()
        k = 1 + i
        layer.set_point(FixedRankPoint(U[:, :k], torch.randn(k, k, generator=g), V[:, :k]))
    x = torch.randn(3, 6)
    out = adapted(x)
    lora = adapted.export_to_peft(tmp_path)
    assert isinstance(lora["target_modules"], list) == list_ok
    assert set(lora["rank_pattern"]) == keys
    pm = _load_in_peft(ref.eval(), tmp_path)
    ranks = {n: m.r["default"] for n, m in pm.base_model.model.named_modules() if hasattr(m, "r")}
    assert ranks == {names[0]: 1, names[1]: 2}
    assert torch.allclose(pm(x), out, atol=1e-6)


def test_dilated_conv_is_refused(tmp_path):
    from torch import nn

    from manifold_lowrank.adapters import AdapterConfig, get_adapter_model

    model = nn.Sequential(nn.Conv2d(2, 3, 3, dilation=2))
    adapted = get_adapter_model(model, AdapterConfig(r=1, target_modules=["0"]))
    with pytest.raises(ValueError, match="dilation"):
        adapted.export_to_peft(tmp_path)
