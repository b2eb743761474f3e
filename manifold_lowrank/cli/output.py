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
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

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
