"""Checkpoints: round trips with changed/heterogeneous/zero ranks, and bad inputs."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import MLP, ConvNet, make_model, run
from test_model import adapt, train
from torch import nn

from manifold_lowrank.adapters import AdaptedModel, AdapterConfig, get_adapter_model
from manifold_lowrank.manifolds.types import FixedRankPoint
from manifold_lowrank.optim import GeoLoRA


def _ranks_changed(adapted: AdaptedModel) -> bool:
    return any(adapted._initial_ranks[n] != r for n, r in adapted.rank_pattern().items())


def test_save_load_round_trip_with_changed_ranks(case, tmp_path):
    _, adapted = adapt(case)
    opt = train(adapted, case, steps=3)
    assert _ranks_changed(adapted), opt.rank_history  # the checkpoint differs from the init
    inputs = case.inputs()
    out = run(adapted, inputs)
    adapted.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["library"] == "manifold_lowrank" and cfg["peft_type"] == "GEOLORA"
    assert {
        n: (tuple(r["rank"]) if isinstance(r["rank"], list) else r["rank"])
        for n, r in cfg["layers"].items()
    } == adapted.rank_pattern()

    fresh = make_model(case, seed=0)
    loaded = AdaptedModel.from_pretrained(fresh, tmp_path)
    assert loaded.rank_pattern() == adapted.rank_pattern()
    assert torch.allclose(run(loaded, inputs), out, atol=1e-6)
    assert not any(p.requires_grad for p in loaded.parameters())  # is_trainable=False
    for n, layer in loaded.adapter_layers().items():
        assert torch.equal(layer.delta_weight(), adapted.adapter_layers()[n].delta_weight())

    trainable = AdaptedModel.from_pretrained(make_model(case, seed=0), tmp_path, is_trainable=True)
    assert {id(p) for p in trainable.adapter_parameters()}
    # training can continue (ranks may keep changing) and a new optimizer sees the new ranks
    opt2 = GeoLoRA(trainable, lr=0.1)
    assert opt2.ranks() == adapted.rank_pattern()


def test_load_adapter_into_an_adapted_model(tmp_path):
    torch.manual_seed(0)
    _, adapted = adapt_mlp()
    x = torch.randn(5, 10)
    before = adapted(x)
    adapted.save_pretrained(tmp_path)
    _, other = adapt_mlp(seed_init=3)
    assert not torch.allclose(other(x), before)
    other.load_adapter(tmp_path)
    assert other.rank_pattern() == adapted.rank_pattern()
    assert torch.allclose(other(x), before, atol=1e-6)


def adapt_mlp(seed_init: int = 0):
    torch.manual_seed(0)
    base = MLP().eval()
    cfg = AdapterConfig(r=3, max_rank=8, target_modules=r"lin\d", init_seed=seed_init)
    adapted = get_adapter_model(base, cfg)
    g = torch.Generator().manual_seed(seed_init + 10)
    for layer in adapted.adapter_layers().values():
        U, S, V = layer.point()
        layer.set_point(FixedRankPoint(U, torch.randn(S.shape, generator=g), V))
    return base, adapted


def test_rank_zero_and_heterogeneous_ranks_round_trip(tmp_path):
    _, adapted = adapt_mlp()
    lin1 = adapted.adapter_layers()["lin1"]
    U, S, V = lin1.point()
    lin1.set_point(FixedRankPoint(U[:, :0], S[:0, :0], V[:, :0]))
    lin0 = adapted.adapter_layers()["lin0"]
    U, S, V = lin0.point()
    lin0.set_point(FixedRankPoint(U[:, :2], S[:2, :2], V[:, :2]))
    assert adapted.rank_pattern() == {"lin0": 2, "lin1": 0}
    x = torch.randn(6, 10)
    out = adapted(x)
    adapted.save_pretrained(tmp_path)
    torch.manual_seed(0)
    loaded = AdaptedModel.from_pretrained(MLP().eval(), tmp_path)
    assert loaded.rank_pattern() == {"lin0": 2, "lin1": 0}
    assert torch.allclose(loaded(x), out, atol=1e-6)


def test_loading_into_a_model_with_other_shapes_fails_cleanly(tmp_path):
    _, adapted = adapt_mlp()
    adapted.save_pretrained(tmp_path)

    class Wider(MLP):
        def __init__(self) -> None:
            super().__init__()
            self.lin0 = nn.Linear(10, 30)
            self.lin1 = nn.Linear(30, 2)

    target = Wider()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=r"lin0.*weight shape \(30, 10\).*\(20, 10\)") as exc:
        AdaptedModel.from_pretrained(target, tmp_path)
    assert "not modified" in str(exc.value)
    assert isinstance(target.lin0, nn.Linear) and type(target.lin0) is nn.Linear
    sd = target.state_dict()
    assert sd.keys() == before.keys() and all(torch.equal(sd[k], before[k]) for k in sd)

    # into an adapted model whose adapters target other modules / shapes
    torch.manual_seed(0)
    other = get_adapter_model(ConvNet(), AdapterConfig(r=2, target_modules=["lin0"]))
    snapshot = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="not modified"):
        other.load_adapter(tmp_path)
    assert all(torch.equal(v, snapshot[k]) for k, v in other.state_dict().items())

    # a missing module
    with pytest.raises(ValueError, match="does not exist"):
        AdaptedModel.from_pretrained(nn.Sequential(nn.Linear(10, 20)), tmp_path)


def test_rejects_foreign_and_corrupt_checkpoints(tmp_path):
    _, adapted = adapt_mlp()
    adapted.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    del cfg["library"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not written by manifold_lowrank"):
        AdaptedModel.from_pretrained(MLP(), tmp_path)
    with pytest.raises(FileNotFoundError):
        AdaptedModel.from_pretrained(MLP(), tmp_path / "nothing")

    from safetensors.torch import load_file, save_file

    adapted.save_pretrained(tmp_path)
    t = load_file(tmp_path / "adapter_model.safetensors")
    t["base_model.model.lin0.adapter_S"][0, 0] = float("nan")
    save_file(t, tmp_path / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="NaN"):
        AdaptedModel.from_pretrained(MLP(), tmp_path)


def test_modules_to_save_are_saved_and_restored(tmp_path):
    torch.manual_seed(0)
    model = MLP().eval()
    adapted = get_adapter_model(
        model, AdapterConfig(r=2, target_modules=["lin0"], modules_to_save=["lin1"])
    )
    with torch.no_grad():
        adapted.get_base_model().lin1.trained_module.weight.add_(1.0)
    x = torch.randn(4, 10)
    out = adapted(x)
    adapted.save_pretrained(tmp_path)
    torch.manual_seed(0)
    loaded = AdaptedModel.from_pretrained(MLP().eval(), tmp_path)
    assert torch.allclose(loaded(x), out, atol=1e-6)
    with loaded.disable_adapter():
        torch.manual_seed(0)
        assert torch.allclose(loaded(x), MLP().eval()(x), atol=1e-6)
