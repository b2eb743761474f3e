"""Result tables, JSON/CSV files and plots of the command line."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from manifold_lowrank.cli.config import CLIError

__all__ = [
    "format_table",
    "plot_histories",
    "plot_training",
    "prepare_out_dir",
    "write_csv",
    "write_json",
]


def prepare_out_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check that files can be written in it.

    Done before any long work, so a bad ``--out`` fails at once.

    Raises
    ------
    CLIError
        If the directory cannot be created or written to.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CLIError(f"--out: {p} exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise CLIError(f"--out: cannot write to {p} ({reason})") from None
    return p


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.2e}"
        return f"{value:.4g}"
    return str(value)


def _scalar_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, (str, int, float, bool)) or value is None:
                cols.setdefault(key, None)
    return list(cols)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Plain-text table of the scalar entries of ``rows`` (missing cells print ``-``)."""
    if not rows:
        return "(no results)"
    cols = list(columns) if columns is not None else _scalar_columns(rows)
    body = [[_cell(row[c]) if row.get(c) is not None else "-" for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(cols)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths))
        ).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cols), sep, *(line(r) for r in body)])


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return _jsonable(value.tolist())
    return str(value)


def write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (non-finite floats become strings)."""
    path.write_text(json.dumps(_jsonable(payload), indent=2) + "\n", encoding="utf-8")
    return path


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write the scalar entries of ``rows`` as CSV with a header line."""
    cols = _scalar_columns(rows)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c) for c in cols})
    return path


def plot_histories(
    path: Path,
    rows: Sequence[Mapping[str, Any]],
    *,
    title: str,
    ylabel: str,
    key: str = "history",
) -> Path | None:
    """Two panels (value vs step and vs wall time, log scale) of each row's history.

    Each ``row[key]`` is a mapping with lists ``step``, ``time_s`` and ``value``.
    Returns ``None`` (and writes nothing) when matplotlib is not installed or no row
    has a history.
    """
    if importlib.util.find_spec("matplotlib") is None:
        return None
    curves = [(row.get("method", "?"), row[key]) for row in rows if row.get(key)]
    if not curves:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for name, hist in curves:
        values = [max(float(v), 1e-300) for v in hist["value"]]
        axes[0].semilogy(hist["step"], values, label=str(name))
        axes[1].semilogy(hist["time_s"], values, label=str(name))
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("wall time [s]")
    for ax in axes:
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[0].set_title(f"{title}: per step")
    axes[1].set_title(f"{title}: per second")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def plot_training(
    out_dir: Path, rows: Sequence[Mapping[str, Any]], *, prefix: str, title: str
) -> list[Path]:
    """The three figures of a training comparison, as PNG files in ``out_dir``.

    * ``{prefix}_ranks.png``: rank of every low-rank layer against the training step, one
      panel per method that has low-rank layers;
    * ``{prefix}_curves.png``: training loss against the step and test accuracy against
      the epoch, one line per method;
    * ``{prefix}_accuracy_vs_params.png``: final test accuracy against the trainable
      (finetune) or stored (train) parameters, log scale.

    Each row carries ``method``, ``accuracy``, ``params`` and ``history`` (keys ``step``,
    ``loss``, ``ranks`` = ``{layer: [rank at each logged step]}``, ``epoch``,
    ``test_acc``), as returned by :func:`manifold_lowrank.cli.tasks.fit`. Returns the
    written paths (none when matplotlib is not installed).
    """
    if importlib.util.find_spec("matplotlib") is None or not rows:
        return []
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out_dir / f"{prefix}_{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    ranked = [r for r in rows if r.get("history", {}).get("ranks")]
    if ranked:
        ncols = min(3, len(ranked))
        nrows = math.ceil(len(ranked) / ncols)
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), squeeze=False, constrained_layout=True
        )
        for ax, row in zip(axes.flat, ranked):
            hist = row["history"]
            layers = hist["ranks"]
            many = len(layers) > 8  # e.g. 37 MiniLM layers: thin grey lines and their mean
            for layer, values in layers.items():
                ax.plot(
                    hist["step"][: len(values)],
                    values,
                    label=None if many else str(layer),
                    drawstyle="steps-post",
                    **({"color": "0.7", "linewidth": 0.7} if many else {}),
                )
            if many:
                n = min(len(v) for v in layers.values())
                mean = [sum(v[i] for v in layers.values()) / len(layers) for i in range(n)]
                ax.plot(
                    hist["step"][:n],
                    mean,
                    color="C0",
                    linewidth=2,
                    drawstyle="steps-post",
                    label=f"mean of {len(layers)} layers (grey: each)",
                )
            ax.set_title(str(row["method"]))
            ax.set_xlabel("training step")
            ax.set_ylabel("rank")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            all_ranks = [v for vals in layers.values() for v in vals]
            if all_ranks:  # integer ranks: a margin of one, so constant ranks get integer ticks
                ax.set_ylim(max(0, min(all_ranks) - 1), max(all_ranks) + 1)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
        for ax in list(axes.flat)[len(ranked) :]:
            ax.set_visible(False)
        fig.suptitle(f"{title}: rank per layer during training")
        save(fig, "ranks")

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for row in rows:
        hist = row.get("history") or {}
        if hist.get("step"):
            ax_loss.plot(hist["step"], hist["loss"], label=str(row["method"]))
        if hist.get("epoch"):
            ax_acc.plot(hist["epoch"], hist["test_acc"], marker="o", label=str(row["method"]))
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("training step")
    ax_loss.set_ylabel("training loss (cross-entropy)")
    ax_loss.set_title(f"{title}: training loss")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy")
    ax_acc.set_title(f"{title}: test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    save(fig, "curves")

    fig, ax = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    for row in rows:
        ax.scatter(
            [max(1, int(row["params"]))], [float(row["accuracy"])], s=45, label=str(row["method"])
        )
    ax.set_xscale("log")
    ax.set_xlabel("parameters (finetune: trainable; train: stored)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{title}: accuracy against parameters")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    save(fig, "accuracy_vs_params")
    return written
