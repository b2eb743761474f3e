"""dEBORA: hypergradient, bilevel identification, pruning, adapters API, bad input."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from manifold_lowrank.adapters import AdapterConfig, get_adapter_model, load_adapter_model
from manifold_lowrank.manifolds.types import FixedRankPoint
from manifold_lowrank.nn import LowRankAdapter, TuckerConv2dAdapter
from manifold_lowrank.nn.debora import (
    DeboraLinearAdapter,
    DeboraTuckerConv2dAdapter,
    grad_parts,
    read_parts,
    write_parts,
)
from manifold_lowrank.optim import DEBORA, DEBORATrainer, split_bilevel
from manifold_lowrank.optim.debora import closed_form_hypergradient, riemannian_gradient

DT = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny problems: one thread (OpenMP spinning on a loaded 2-core box costs ~50× per QR)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


EPS64 = torch.finfo(DT).eps


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orth(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, k, dtype=DT, generator=gen))[0]


def _linear_layer(m: int, n: int, r: int, gen: torch.Generator, **kw) -> DeboraLinearAdapter:
    base = nn.Linear(n, m, bias=False, dtype=DT)
    nn.init.zeros_(base.weight)
    return DeboraLinearAdapter(base, r, generator=gen, dtype=DT, **kw)


def _upper_loss(W: torch.Tensor, A1: torch.Tensor) -> torch.Tensor:
    """A smooth, non-quadratic upper loss ℓ₁(W) (log-cosh + quartic)."""
    D = W - A1
    return torch.log(torch.cosh(D)).sum() + 0.1 * (D**4).sum()


def _apply_dense(layer: nn.Module, n: int) -> torch.Tensor:
    """ΔW (m×n) through the layer's forward pass (identity inputs), differentiable."""
    return layer(torch.eye(n, dtype=DT)).transpose(0, 1)


# --------------------------------------------------------------------------- hypergradient
def test_hypergradient_matches_finite_differences_with_exact_lower_level() -> None:
    """Stiefel bases, f₂ = ½‖U diag(s) Vᵀ − A₂‖²: B*(s) = top singular pairs of A₂ (ordered
    like s) for every s, solved exactly by an SVD inside F; G̃ = dF/ds."""
    gen = _gen(0)
    m, n, r = 9, 7, 3
    A2 = torch.randn(m, n, dtype=DT, generator=gen)
    A1 = 0.5 * torch.randn(m, n, dtype=DT, generator=gen)
    P, _, Qh = torch.linalg.svd(A2)

    def b_star(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.argsort(torch.argsort(s, descending=True))  # rank of each s_j
        return P[:, order], Qh[order].transpose(0, 1)

    def F(s: torch.Tensor) -> float:
        U, V = b_star(s)
        return float(_upper_loss(U @ torch.diag(s) @ V.T, A1))

    s = torch.tensor([0.7, 1.9, 1.1], dtype=DT)
    h = 1e-6
    fd = torch.tensor(
        [(F(s + h * e) - F(s - h * e)) / (2 * h) for e in torch.eye(r, dtype=DT)], dtype=DT
    )

    layer = _linear_layer(m, n, r, gen)
    U, V = b_star(s)
    layer.set_point(FixedRankPoint(U, torch.diag(s), V))
    opt = DEBORA([layer], tau=10.0, eps=1e-3)
    opt.zero_grad()
    _upper_loss(_apply_dense(layer, n), A1).backward()
    G = opt.layer_hypergradient(0)
    torch.testing.assert_close(G, fd, rtol=1e-7, atol=1e-7)
    # the exact lower-level solution does not move with s: dF/ds = ∂_s f₁ here
    gs, gb, _ = grad_parts(layer, "matrix", read_parts(layer, "matrix", "stiefel"))
    torch.testing.assert_close(G, gs, rtol=0, atol=100 * EPS64 * float(gs.abs().max()))
    # the formula read with Euclidean partials has the opposite sign (Euler's identity)
    euclid = closed_form_hypergradient(gs, (U, V), gb, s)
    torch.testing.assert_close(euclid, -fd, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("fmt", ["matrix", "tucker", "cp"])
def test_euler_identity_of_the_closed_form(fmt) -> None:
    """u_jᵀ∂_{u_j} f = s_j ∂_{s_j} f for each component-carrying factor (homogeneity), hence the
    Euclidean closed form is (1 − d/(d−1)) ∂_s f; Riemannian gradients give ∂_s f exactly."""
    gen = _gen(1)
    if fmt == "matrix":
        layer = _linear_layer(6, 5, 3, gen, eps=0.3)
        x = torch.randn(4, 5, dtype=DT, generator=gen)
    else:
        conv = nn.Conv2d(4, 5, 3, padding=1, bias=False, dtype=DT)
        layer = DeboraTuckerConv2dAdapter(
            conv, 3, tensor_format=fmt, eps=0.3, generator=gen, dtype=DT
        )
        x = torch.randn(2, 4, 5, 5, dtype=DT, generator=gen)
    bases = "oblique" if fmt == "cp" else "stiefel"
    parts = read_parts(layer, fmt, bases)
    write_parts(layer, fmt, parts._replace(s=torch.tensor([0.4, 1.3, 0.8], dtype=DT)))
    parts = read_parts(layer, fmt, bases)
    (layer(x) ** 3).sum().backward()
    gs, gb, _ = grad_parts(layer, fmt, parts)
    d = len(parts.bases)
    for B, g in zip(parts.bases, gb):
        torch.testing.assert_close((B * g).sum(0), parts.s * gs, rtol=1e-10, atol=1e-12)
    euclid = closed_form_hypergradient(gs, parts.bases, gb, parts.s)
    torch.testing.assert_close(euclid, (1 - d / (d - 1)) * gs, rtol=1e-10, atol=1e-12)
    riem = closed_form_hypergradient(gs, parts.bases, gb, parts.s, parts.kinds)
    torch.testing.assert_close(riem, gs, rtol=0, atol=1e3 * EPS64 * float(gs.abs().max()))


@pytest.mark.parametrize("fmt", ["matrix", "tucker", "cp"])
def test_partial_gradient_in_s_matches_finite_differences(fmt) -> None:
    """grad_parts' chain rule through the storage (S = diag s, C[j] = s_j Ĉ[j])."""
    gen = _gen(2)
    if fmt == "matrix":
        layer = _linear_layer(5, 4, 3, gen, eps=0.2)
        x = torch.randn(3, 4, dtype=DT, generator=gen)
    else:
        conv = nn.Conv2d(3, 4, 3, padding=1, bias=False, dtype=DT)
        layer = DeboraTuckerConv2dAdapter(
            conv, 3, tensor_format=fmt, eps=0.2, generator=gen, dtype=DT
        )
        x = torch.randn(2, 3, 4, 4, dtype=DT, generator=gen)
    bases = "oblique" if fmt == "cp" else "stiefel"
    parts = read_parts(layer, fmt, bases)

    def f(s: torch.Tensor) -> float:
        write_parts(layer, fmt, parts._replace(s=s))
        with torch.no_grad():
            return float(torch.sin(layer(x)).sum())

    s0 = torch.tensor([0.5, 0.9, 0.3], dtype=DT)
    h = 1e-6
    fd = torch.tensor(
        [(f(s0 + h * e) - f(s0 - h * e)) / (2 * h) for e in torch.eye(3, dtype=DT)], dtype=DT
    )
    write_parts(layer, fmt, parts._replace(s=s0))
    layer.zero_grad()
    torch.sin(layer(x)).sum().backward()
    gs, _, _ = grad_parts(layer, fmt, read_parts(layer, fmt, bases))
    torch.testing.assert_close(gs, fd, rtol=1e-7, atol=1e-8)


def test_free_bases_make_the_upper_objective_constant() -> None:
    """Free bases: every s > 0 reaches the same ΔW*, so F is flat (exact hypergradient 0),
    while the closed form gives −∂_s f₁; the optimizer warns about it."""
    gen = _gen(3)
    m, n, r = 6, 5, 2
    A2 = torch.randn(m, n, dtype=DT, generator=gen)
    A1 = torch.randn(m, n, dtype=DT, generator=gen)
    P, sig, Qh = torch.linalg.svd(A2)

    def F(s: torch.Tensor) -> float:  # B*(s): U = P diag(σ/s), V = Q (one exact minimiser)
        U = P[:, :r] * (sig[:r] / s)
        return float(_upper_loss(U @ torch.diag(s) @ Qh[:r], A1))

    s = torch.tensor([0.6, 1.4], dtype=DT)
    fd = [(F(s + 1e-5 * e) - F(s - 1e-5 * e)) / 2e-5 for e in torch.eye(r, dtype=DT)]
    assert max(abs(x) for x in fd) < 1e-8
    layer = _linear_layer(m, n, r, gen)
    with pytest.warns(UserWarning, match="free"):
        DEBORA([layer], tau=5.0, bases="free")


# --------------------------------------------------------------------------- bilevel run
def _synthetic_bilevel(seed: int = 0):
    """f_k(ΔW) = ½‖ΔW − A_k‖²_F realised by a linear layer on orthogonal inputs."""
    gen = _gen(seed)
    m, n, r = 8, 6, 4
    P = _orth(m, m, gen)
    Q = _orth(n, n, gen)
    A2 = P[:, :6] @ torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.5, 0.2], dtype=DT)) @ Q.T
    c = torch.tensor([2.0, 1.0, -0.5, -1.0], dtype=DT)
    A1 = P[:, :4] @ torch.diag(c) @ Q[:, :4].T
    X = torch.eye(n, dtype=DT) * math.sqrt(n)  # XᵀX / n = I
    return gen, (m, n, r), P, Q, A1, A2, X


def test_bilevel_support_is_identified_and_pruned() -> None:
    """Known optimum: B* = top singular pairs of A₂, F(s) = ½‖s − c‖² + const with
    c_j = u_jᵀA₁v_j = (2, 1, −0.5, −1); τ = 2.5, ε = 0.01 ⇒ s* = (1.76, 0.76) on the
    first two directions, the other two at ε (strictly complementary)."""
    gen, (m, n, r), P, Q, A1, A2, X = _synthetic_bilevel()
    base = nn.Linear(n, m, bias=False, dtype=DT)
    nn.init.zeros_(base.weight)
    layer = DeboraLinearAdapter(base, r, eps=0.01, generator=gen, dtype=DT)
    opt = DEBORA(
        [layer],
        tau=2.5,
        eps=0.01,
        lr=0.05,
        lower="sgd",
        momentum=0.0,
        step_rule="short_step",
        smoothness=1.0,
        prune_after=60,
        prune_patience=15,
        lower_steps=4,
        record_weights=True,
    )

    def loss(batch) -> torch.Tensor:
        x, A = batch
        return 0.5 * ((layer(x) - x @ A.T) ** 2).sum() / n

    d1, d2 = [(X, A1)], [(X, A2)]
    bytes0 = layer.factors()[0].untyped_storage().nbytes()
    DEBORATrainer(opt, loss, d1, d2).fit(120)
    supports = [int((w[0] > 0.01).sum()) for w in (h["weights"] for h in opt.history)]
    first = next(k for k in range(len(supports)) if all(x == 2 for x in supports[k:]))
    assert first < 60  # identified in finitely many iterations, before pruning started
    assert opt.history[-1]["ranks"] == [2]
    U, S, V = layer.point()
    assert U.shape == (m, 2) and S.shape == (2, 2) and V.shape == (n, 2)
    assert layer.factors()[0].untyped_storage().nbytes() < bytes0  # memory really dropped
    s = torch.sort(torch.diagonal(S), descending=True).values
    torch.testing.assert_close(s, torch.tensor([1.76, 0.76], dtype=DT), rtol=0, atol=1e-6)
    target = P[:, :2] @ torch.diag(torch.tensor([1.76, 0.76], dtype=DT)) @ Q[:, :2].T
    torch.testing.assert_close(layer.delta_weight(), target, rtol=0, atol=1e-5)
    assert opt.fw_gap < 1e-8
    # bases stayed on the Stiefel manifold through 480 lower steps and the pruning
    eye = torch.eye(2, dtype=DT)
    torch.testing.assert_close(U.T @ U, eye, rtol=0, atol=1e3 * EPS64)
    torch.testing.assert_close(V.T @ V, eye, rtol=0, atol=1e3 * EPS64)


@pytest.mark.parametrize("budget", ["global", "layer"])
def test_iterates_stay_feasible_with_stochastic_gradients(budget) -> None:
    gen = _gen(4)
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 8, dtype=DT), nn.Tanh(), nn.Linear(8, 3, dtype=DT))
    adapted = get_adapter_model(
        model, AdapterConfig(method="debora", r=4, target_modules=["0", "2"], init_seed=1)
    )
    tau, eps = 1.0, 0.02
    opt = DEBORA(
        adapted,
        tau=tau,
        eps=eps,
        lr=1e-2,
        budget=budget,
        step_rule="diminishing",
        prune_after=10**6,
    )
    X = torch.randn(64, 6, dtype=DT, generator=gen)
    y = torch.randint(0, 3, (64,), generator=gen)
    batches = [(X[i : i + 8], y[i : i + 8]) for i in range(0, 64, 8)]
    d1, d2 = batches[:4], batches[4:]

    def loss(b):
        return nn.functional.cross_entropy(adapted(b[0]), b[1])

    trainer = DEBORATrainer(opt, loss, d1, d2)
    for _ in range(25):
        trainer.step()
        ws = list(opt.weights().values())
        for w in ws:
            assert bool((w >= eps * (1 - 1e-12)).all())
        sums = [float(w.sum()) for w in ws]
        if budget == "global":
            assert sum(sums) <= tau + sum(w.numel() for w in ws) * eps + 1e-12
        else:
            assert all(sv <= tau + w.numel() * eps + 1e-12 for sv, w in zip(sums, ws))
        assert not math.isnan(opt.fw_gap) and opt.fw_gap >= 0


@pytest.mark.parametrize("fmt", ["tucker", "cp"])
def test_lower_step_keeps_the_tensor_bases_on_their_manifolds(fmt) -> None:
    gen = _gen(5)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False, dtype=DT)
    layer = DeboraTuckerConv2dAdapter(conv, 3, tensor_format=fmt, eps=0.1, generator=gen, dtype=DT)
    opt = DEBORA([layer], tau=2.0, eps=0.1, lr=0.05)
    s0 = read_parts(layer, fmt, opt.layer_bases[0]).s
    # fresh adapters (s = ε𝟏) start at the barycentre ε + τ/(R+1)
    torch.testing.assert_close(s0, torch.full((3,), 0.1 + 2.0 / 4, dtype=DT), rtol=1e-12, atol=0)
    x = torch.randn(4, 3, 6, 6, dtype=DT, generator=gen)
    target = torch.randn(4, 5, 6, 6, dtype=DT, generator=gen)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = ((layer(x) - target) ** 2).mean()
        loss.backward()
        opt.lower_step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    parts = read_parts(layer, fmt, opt.layer_bases[0])
    torch.testing.assert_close(parts.s, s0, rtol=1e-12, atol=0)  # the lower level keeps s
    for B, kind in zip((*parts.bases, *parts.shared), (*parts.kinds, *parts.shared_kinds)):
        if kind == "stiefel":
            torch.testing.assert_close(
                B.T @ B, torch.eye(B.shape[1], dtype=DT), rtol=0, atol=1e3 * EPS64
            )
        else:
            torch.testing.assert_close(
                B.norm(dim=0), torch.ones(B.shape[1], dtype=DT), rtol=0, atol=1e3 * EPS64
            )
    if fmt == "cp":  # the core stays superdiagonal
        core = layer.tucker_parameters()[0]
        off = core.clone()
        idx = torch.arange(3)
        off[idx, idx] = 0
        assert float(off.detach().abs().max()) == 0.0


def test_canonicalization_is_exact_for_generic_adapters() -> None:
    gen = _gen(6)
    base = nn.Linear(5, 7, bias=False, dtype=DT)
    layer = LowRankAdapter(base, 3, generator=gen, dtype=DT)
    U = torch.randn(7, 3, dtype=DT, generator=gen)
    S = 0.2 * torch.randn(3, 3, dtype=DT, generator=gen)
    V = torch.randn(5, 3, dtype=DT, generator=gen)
    layer.set_point(FixedRankPoint(U, S, V))
    dw = layer.delta_weight().clone()
    sv = torch.linalg.svdvals(dw)[:3]
    DEBORA([layer], tau=float(sv.sum()) + 1.0, eps=float(sv.min()) / 2)
    U2, S2, _ = layer.point()
    torch.testing.assert_close(layer.delta_weight(), dw, rtol=0, atol=1e3 * EPS64)
    torch.testing.assert_close(S2, torch.diag(torch.diagonal(S2)), rtol=0, atol=0)
    torch.testing.assert_close(U2.T @ U2, torch.eye(3, dtype=DT), rtol=0, atol=1e3 * EPS64)
    # a fresh zero-core Tucker adapter: s = ε with init="keep" (the vertex ε𝟏), the
    # barycentre ε + τ/(r+1) with the default init="auto"
    conv = nn.Conv2d(3, 4, 3, bias=False, dtype=DT)
    tl = TuckerConv2dAdapter(conv, 2, generator=_gen(16), dtype=DT)
    opt = DEBORA([tl], tau=1.0, eps=0.05, init="keep")
    torch.testing.assert_close(opt.weights()["0"], torch.full((2,), 0.05, dtype=DT))
    tl = TuckerConv2dAdapter(conv, 2, generator=_gen(16), dtype=DT)
    opt = DEBORA([tl], tau=1.0, eps=0.05)
    torch.testing.assert_close(opt.weights()["0"], torch.full((2,), 0.05 + 1.0 / 3, dtype=DT))


def test_nonfinite_gradients_skip_without_changes() -> None:
    gen = _gen(7)
    layer = _linear_layer(5, 4, 3, gen, eps=0.1)
    opt = DEBORA([layer], tau=1.0, eps=0.1)
    x = torch.randn(2, 4, dtype=DT, generator=gen)
    layer(x).sum().backward()
    layer.factors()[0].grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in layer.factors()]
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.lower_step()
    layer.factors()[1].grad[0, 0] = float("inf")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.upper_step()
    for p, q in zip(layer.factors(), before):
        assert torch.equal(p.detach(), q)
    assert opt.nan_skips == 2


# --------------------------------------------------------------------------- adapters API
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        x = nn.functional.avg_pool2d(x, 2)
        return self.fc(x.flatten(1))


def test_adapter_api_save_load_merge_export(tmp_path) -> None:
    torch.manual_seed(8)
    gen = _gen(8)
    net = _Net()
    cfg = AdapterConfig(
        method="debora",
        r=4,
        target_modules=["conv2", "conv3", "fc"],
        conv_format="tucker",
        method_kwargs={"eps": 0.01, "tensor_format": "cp"},
        init_seed=3,
    )
    adapted = get_adapter_model(net, cfg)
    layers = adapted.adapter_layers()
    assert isinstance(layers["conv3"], DeboraTuckerConv2dAdapter)
    assert layers["conv3"].debora_format == "cp"
    x = torch.randn(16, 1, 8, 8, generator=gen)
    y = torch.randint(0, 5, (16,), generator=gen)
    opt = DEBORA(
        adapted, tau=0.5, eps=0.01, lr=1e-2, prune_after=3, prune_patience=1, step_size=0.5
    )

    def closure(level: str) -> torch.Tensor:
        sl = slice(0, 8) if level == "upper" else slice(8, 16)
        loss = nn.functional.cross_entropy(adapted(x[sl]), y[sl])
        loss.backward()
        return loss

    for _ in range(6):
        opt.step(closure)
    ranks = adapted.rank_pattern()
    assert sum(r if isinstance(r, int) else r[0] for r in ranks.values()) < 12  # pruned
    assert ranks["conv3"][0] == ranks["conv3"][1]  # CP: both channel ranks fall together
    adapted.eval()
    with torch.no_grad():
        out = adapted(x)
    adapted.save_pretrained(tmp_path / "ckpt")
    # a fresh _Net has other base weights: give it the base model's weights first
    fresh = _Net()
    fresh.load_state_dict(
        {
            k.replace(".base_layer", ""): v
            for k, v in net.state_dict().items()
            if "adapter_" not in k
        }
    )
    loaded = load_adapter_model(fresh, tmp_path / "ckpt")
    assert loaded.rank_pattern() == ranks
    assert isinstance(loaded.adapter_layers()["fc"], DeboraLinearAdapter)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out, rtol=1e-5, atol=1e-6)
        merged = adapted.merge_and_unload()
        torch.testing.assert_close(merged(x), out, rtol=1e-4, atol=1e-5)


def test_export_to_peft_reproduces_delta_weights(tmp_path) -> None:
    import safetensors.torch as st

    torch.manual_seed(9)
    net = _Net()
    adapted = get_adapter_model(
        net,
        AdapterConfig(method="debora", r=3, target_modules=["conv2", "fc"], conv_format="tucker"),
    )
    opt = DEBORA(adapted, tau=1.0, eps=0.05, step_size=0.5)
    x = torch.randn(4, 1, 8, 8)
    for _ in range(2):
        opt.zero_grad()
        adapted(x).square().sum().backward()
        opt.upper_step()
    cfg = adapted.export_to_peft(tmp_path / "peft")
    assert cfg["peft_type"] == "LORA"
    tens = st.load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    for name, layer in adapted.adapter_layers().items():
        A = tens[f"base_model.model.{name}.lora_A.weight"]
        B = tens[f"base_model.model.{name}.lora_B.weight"]
        dw = layer.delta_weight()
        if A.dim() == 4:  # conv: B (out, r, 1, 1) ∘ A (r, in, kh, kw)
            recon = torch.einsum("or,rihw->oihw", B[:, :, 0, 0], A)
        else:
            recon = B @ A
        torch.testing.assert_close(recon, dw.detach(), rtol=1e-6, atol=1e-7)


def test_state_dict_round_trip_after_pruning() -> None:
    gen = _gen(10)
    layer = _linear_layer(6, 5, 4, gen, eps=0.05)
    opt = DEBORA([layer], tau=1.0, eps=0.05, prune_after=1, prune_patience=1, step_size=1.0)
    x = torch.randn(3, 5, dtype=DT, generator=gen)
    for _ in range(3):
        opt.zero_grad()
        layer(x).sum().backward()
        opt.lower_step()
        opt.zero_grad()
        (layer(x) - 1).square().sum().backward()
        opt.upper_step()
    assert layer.rank < 4
    sd = opt.state_dict()
    opt2 = DEBORA([layer], tau=1.0, eps=0.05)
    opt2.load_state_dict(sd)
    assert opt2._fw_t == opt._fw_t
    st1, st2 = opt._state_of(0), opt2._state_of(0)
    assert set(st1) == set(st2)
    for k in st1:
        if isinstance(st1[k], torch.Tensor):
            assert torch.equal(st1[k], st2[k])


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"tau": 0.0}, "tau"),
        ({"tau": -2.0}, "tau"),
        ({"tau": 1.0, "eps": 0.0}, "eps"),
        ({"tau": 1.0, "eps": -1e-3}, "eps"),
    ],
)
def test_bad_tau_and_eps(kw, name) -> None:
    layer = _linear_layer(4, 3, 2, _gen(11))
    with pytest.raises(ValueError, match=name):
        DEBORA([layer], **kw)


@pytest.mark.parametrize(
    ("kw", "name", "exc"),
    [
        ({"tau": float("nan")}, "tau", ValueError),
        ({"tau": float("inf")}, "tau", ValueError),
        ({"tau": "1"}, "tau", TypeError),
        ({"tau": True}, "tau", TypeError),
        ({"tau": 1.0, "eps": float("inf")}, "eps", ValueError),
        ({"tau": 1.0, "eps": None}, "eps", TypeError),
        ({"tau": 1.0, "init": "center"}, "init", ValueError),
    ],
)
def test_bad_tau_eps_init_types_and_values(kw, name, exc) -> None:
    layer = _linear_layer(4, 3, 2, _gen(11))
    with pytest.raises(exc, match=name):
        DEBORA([layer], **kw)


@pytest.mark.parametrize("eps", [0.0, -1e-3, float("nan")])
def test_bad_eps_through_the_adapter_config(eps) -> None:
    model = nn.Sequential(nn.Linear(6, 4, dtype=DT))
    cfg = AdapterConfig(method="debora", r=2, target_modules=["0"], method_kwargs={"eps": eps})
    with pytest.raises(ValueError, match="eps"):
        get_adapter_model(model, cfg)


def test_start_point_barycenter_keep_and_auto() -> None:
    tau, eps = 1.5, 0.01
    # fresh adapters (s = ε𝟏): "auto" starts at the barycentre of the global simplex
    a, b = _linear_layer(4, 3, 2, _gen(20)), _linear_layer(5, 3, 3, _gen(21))
    opt = DEBORA([a, b], tau=tau, eps=eps)
    R = 5
    for w in opt.weights().values():
        torch.testing.assert_close(w, torch.full_like(w, eps + tau / (R + 1)), rtol=1e-14, atol=0)
    # every vertex is active: ε𝟏 and all R components, each with weight 1/(R+1)
    from manifold_lowrank.optim.frank_wolfe import BASE, PerturbedSimplex

    simplex = PerturbedSimplex(R, tau, eps)
    s = torch.cat(list(opt.weights().values()))
    assert simplex.active_vertices(s) == [BASE, *range(R)]
    # budget="layer": one barycentre per layer
    a, b = _linear_layer(4, 3, 2, _gen(20)), _linear_layer(5, 3, 3, _gen(21))
    opt = DEBORA([a, b], tau=tau, eps=eps, budget="layer")
    w = list(opt.weights().values())
    torch.testing.assert_close(w[0], torch.full((2,), eps + tau / 3, dtype=DT), rtol=1e-14, atol=0)
    torch.testing.assert_close(w[1], torch.full((3,), eps + tau / 4, dtype=DT), rtol=1e-14, atol=0)
    # "keep": fresh adapters stay at the vertex ε𝟏
    a = _linear_layer(4, 3, 2, _gen(20))
    opt = DEBORA([a], tau=tau, eps=eps, init="keep")
    torch.testing.assert_close(
        opt.weights()["0"], torch.full((2,), eps, dtype=DT), rtol=1e-14, atol=0
    )
    # "auto" keeps trained weights (inside S): ΔW unchanged by the construction
    a = _linear_layer(4, 3, 2, _gen(22))
    parts = read_parts(a, "matrix", "stiefel")
    write_parts(a, "matrix", parts._replace(s=torch.tensor([0.4, 0.2], dtype=DT)))
    before = a.delta_weight().clone()
    opt = DEBORA([a], tau=tau, eps=eps)
    torch.testing.assert_close(a.delta_weight(), before, rtol=0, atol=100 * EPS64)


def test_empty_data_streams_are_named() -> None:
    layer = _linear_layer(4, 3, 2, _gen(12))
    opt = DEBORA([layer], tau=1.0)
    batch = [torch.randn(2, 3, dtype=DT)]

    def loss(b):
        return layer(b).sum()

    with pytest.raises(ValueError, match="d1"):
        DEBORATrainer(opt, loss, [], [batch])
    with pytest.raises(ValueError, match="d2"):
        DEBORATrainer(opt, loss, [batch], [])
    with pytest.raises(ValueError, match="d2"):  # unsized and empty: found at the first draw
        DEBORATrainer(opt, loss, [batch], (b for b in [])).step()
    X, y = torch.randn(10, 3), torch.randn(10)
    with pytest.raises(ValueError, match="d1"):
        split_bilevel((X, y), fraction=0.01)
    with pytest.raises(ValueError, match="d2"):
        split_bilevel((X, y), fraction=0.99)
    with pytest.raises(ValueError, match="data"):
        split_bilevel((X[:0], y[:0]))
    d1, d2 = split_bilevel((X, y), 0.5, generator=_gen(0))
    assert d1[0].shape[0] == 5 and d2[0].shape[0] == 5
    assert not set(map(tuple, d1[0].tolist())) & set(map(tuple, d2[0].tolist()))
    x = torch.randn(2, 3, dtype=DT)
    with pytest.raises(ValueError, match="d1"):  # unsized and empty upper stream
        DEBORATrainer(opt, loss, (b for b in []), [x]).step()
    with pytest.raises(ValueError, match="d1"):
        DEBORATrainer(opt, loss, None, [x])
    with pytest.raises(ValueError, match="d2"):
        DEBORATrainer(opt, loss, [x], None)
    from torch.utils.data import DataLoader, TensorDataset

    empty = DataLoader(TensorDataset(torch.zeros(0, 3, dtype=DT)), batch_size=2)
    with pytest.raises(ValueError, match="d1"):
        DEBORATrainer(opt, loss, empty, [x])
    with pytest.raises(ValueError, match="d2"):
        DEBORATrainer(opt, loss, [x], empty)
    with pytest.raises(TypeError, match="closure"):
        opt.step()


def test_riemannian_gradient_is_tangent() -> None:
    gen = _gen(13)
    X = _orth(7, 3, gen)
    G = torch.randn(7, 3, dtype=DT, generator=gen)
    xi = riemannian_gradient("stiefel", X, G)
    sk = X.T @ xi
    torch.testing.assert_close(sk, -sk.T, rtol=0, atol=100 * EPS64)
    Xo = X / X.norm(dim=0)
    xo = riemannian_gradient("oblique", Xo, G)
    torch.testing.assert_close((Xo * xo).sum(0), torch.zeros(3, dtype=DT), rtol=0, atol=100 * EPS64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(riemannian_gradient("free", X, G), G)
