"""Running methods on one task for ``train``, ``finetune``, ``compare`` and ``demo``.

:func:`prepare` validates everything that can be checked before long work (task, methods,
optional packages, numbers) and raises :class:`~manifold_lowrank.cli.config.CLIError`;
:func:`run_task` loads the task, runs the methods one after the other on the same batches
and prints one results table; :func:`write_results` writes ``results.json``,
``results.csv`` and the PNG plots.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from manifold_lowrank.cli.config import CLIError
from manifold_lowrank.cli.output import format_table, plot_training, write_csv, write_json

__all__ = ["TABLE_COLUMNS", "prepare", "run_task", "write_results"]

TABLE_COLUMNS = ["method", "accuracy", "ranks", "params", "s_per_step", "time_s"]
"""Columns of the printed table (``params``: trainable for finetune, stored for train)."""


def prepare(config: Mapping[str, Any], *, kind: str | None) -> dict[str, Any]:
    """Validated run settings of one task: task defaults filled in, methods resolved.

    Parameters
    ----------
    config : mapping
        Resolved options (``task``, ``methods``, ``epochs``, ``batch_size``, ``rank``, …;
        ``None`` means "the task's default").
    kind : {"train", "finetune"} or None
        Required kind of the task (``None``: any, as for ``compare``).

    Raises
    ------
    CLIError
        Unknown task/method, a task of the wrong kind, missing optional packages,
        inconsistent numbers.
    """
    from manifold_lowrank.cli import load_runners
    from manifold_lowrank.cli.registry import REGISTRY, UnknownRunnerError
    from manifold_lowrank.cli.tasks import TASKS, missing_extras

    load_runners()
    name = config["task"]
    spec = TASKS.get(name)
    if spec is None or (kind is not None and spec.kind != kind):
        valid = [t for t, s in TASKS.items() if kind is None or s.kind == kind]
        raise CLIError(f"--task: unknown task {name!r}; choose from: {', '.join(valid)}")
    hints = missing_extras(spec.requires)
    if hints:
        raise CLIError(f"task {name!r} needs optional packages: {'; '.join(hints)}")
    cfg = dict(config)
    for key, value in spec.defaults.items():
        if cfg.get(key) is None:
            cfg[key] = value
    if cfg.get("max_rank") is None:
        cfg["max_rank"] = 4 * cfg["rank"]
    if cfg["max_rank"] < cfg["rank"]:
        raise CLIError(f"--max-rank ({cfg['max_rank']}) must be >= --rank ({cfg['rank']})")
    group = spec.kind
    if cfg.get("methods"):
        names = list(cfg["methods"])
        if cfg.get("dense") and "dense" not in names:
            names.append("dense")
        try:
            runners = [REGISTRY.get(n, group=group) for n in names]
        except UnknownRunnerError as exc:
            raise CLIError(f"--methods: {exc}") from None
        for r in runners:
            missing = missing_extras(r.requires)
            if missing:
                raise CLIError(f"method {r.name!r} needs an optional package: {'; '.join(missing)}")
    else:
        runners = [r for r in REGISTRY.runners(group) if r.default and r.available]
    cfg["methods"] = [r.name for r in runners]
    cfg["kind"] = group
    return cfg


def _log(config: Mapping[str, Any], message: str) -> None:
    if not config.get("quiet"):
        print(message, file=sys.stderr, flush=True)


def run_task(
    cfg: Mapping[str, Any],
    *,
    emit: Callable[[str], None],
    progress: Callable[..., Any] | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Load the task of ``cfg`` (from :func:`prepare`), run its methods, print the table.

    Returns the result rows (with histories) and the task's information
    (pre-training accuracy, sizes, ...).
    """
    from manifold_lowrank.cli.registry import REGISTRY
    from manifold_lowrank.cli.tasks import load_task

    t0 = time.perf_counter()
    task = load_task(
        cfg["task"],
        seed=cfg["seed"],
        device=cfg["device"],
        limit=cfg.get("limit"),
        pretrain_epochs=cfg.get("pretrain_epochs"),
    )
    info = {
        "task": task.name,
        "description": task.spec.description,
        "train_samples": task.n_train,
        "test_samples": len(task.y_test),
        "load_s": time.perf_counter() - t0,
        **task.info,
    }
    extra = "".join(
        f", {k.replace('_', ' ')} {v:.3f}" for k, v in task.info.items() if isinstance(v, float)
    )
    description = task.spec.description
    if task.spec.kind == "train":
        widths = [task.in_features, *(cfg.get("hidden") or [500, 500, 500]), task.n_classes]
        description += f", MLP {'-'.join(map(str, widths))}"
    info["description"] = description
    emit(
        f"{cfg['kind']} | {description}\n"
        f"  {task.n_train} train / {len(task.y_test)} test samples, {cfg['epochs']} epochs of "
        f"batch {cfg['batch_size']}, rank {cfg['rank']}, tau {cfg['tau']}, seed {cfg['seed']}, "
        f"device {cfg['device']}{extra}"
    )
    rows = []
    for name in cfg["methods"]:
        run_cfg = {**cfg, "task_data": task, "progress_factory": progress}
        row = REGISTRY.get(name)(run_cfg)
        _log(cfg, f"  {task.name}/{name}: accuracy {row['accuracy']:.4f} ({row['time_s']:.1f} s)")
        rows.append(row)
    emit("")
    emit(format_table(rows, TABLE_COLUMNS))
    return rows, info


def write_results(
    out: Path,
    sections: Sequence[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]], Mapping[str, Any]]],
    *,
    command: str,
    settings: Mapping[str, Any] | None = None,
    extra_rows: Sequence[Mapping[str, Any]] = (),
) -> list[Path]:
    """Write ``results.json`` (settings, task information and every row with its
    histories), ``results.csv`` (scalar columns) and the plots of every section
    ``(config, rows, info)``; ``settings``: the command's options, ``extra_rows``: rows of
    the manifold demo. Returns the written paths."""
    settings_skip = {"task_data", "progress_factory", "problem"}
    payload: dict[str, Any] = {"command": command}
    if settings is not None:
        payload["settings"] = {k: v for k, v in settings.items() if k not in settings_skip}
    payload["tasks"] = []
    all_rows: list[Mapping[str, Any]] = []
    written: list[Path] = []
    for cfg, rows, info in sections:
        payload["tasks"].append(
            {
                "settings": {k: v for k, v in cfg.items() if k not in settings_skip},
                "info": dict(info),
                "results": list(rows),
            }
        )
        all_rows.extend(rows)
        written += plot_training(out, rows, prefix=str(cfg["task"]), title=str(cfg["task"]))
    if extra_rows:
        payload["manifold_demo"] = list(extra_rows)
        all_rows.extend(extra_rows)
    if sections and importlib.util.find_spec("matplotlib") is None:
        print("no plots: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
    written.insert(0, write_json(out / "results.json", payload))
    written.insert(1, write_csv(out / "results.csv", all_rows))
    return written
