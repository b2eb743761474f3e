"""The ``manifold-lowrank`` command line (also ``python -m manifold_lowrank``).

Subcommands
-----------
``info``
    Versions of Python, torch, geoopt, tensorly and the optional extras, the detected
    device, the offline datasets and models, and the registered methods.
``demo``
    The main job: optimizers on the fixed-rank manifold compared on low-rank matrix
    completion and approximation (see :mod:`manifold_lowrank.cli.demo`), with a results
    table, and JSON/CSV/PNG files under ``--out``.

Global options (before or after the subcommand): ``--device``, ``--seed``,
``--threads``, ``--out DIR``, ``--config FILE.toml``, ``--no-progress``, ``--debug``.

New subcommands are :class:`Command` entries of :data:`COMMANDS`; new methods are
runners registered in :mod:`manifold_lowrank.cli.registry` by a module listed in
:data:`RUNNER_MODULES`.

Exit status: ``0`` on success, ``2`` for bad input (one line on stderr, no traceback),
``1`` for a failure while running (one line; ``--debug`` shows the traceback),
``130`` when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from manifold_lowrank.cli.config import (
    CLIError,
    Option,
    choice,
    fraction,
    load_toml,
    method_list,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    resolve,
    text,
)

__all__ = ["COMMANDS", "RUNNER_MODULES", "CLIError", "Command", "Context", "load_runners", "main"]

PROG = "manifold-lowrank"


@dataclass
class Context:
    """What a command's ``run`` receives besides its options."""

    out: Path | None
    progress: Callable[..., Any] | None
    stdout: Any = field(default_factory=lambda: sys.stdout)

    def print(self, *args: Any) -> None:
        print(*args, file=self.stdout, flush=True)


@dataclass(frozen=True)
class Command:
    """A subcommand: its options and ``run(config, context) -> exit status``."""

    name: str
    help: str
    options: tuple[Option, ...]
    run: Callable[[dict[str, Any], Context], int]
    description: str = ""


GLOBAL_OPTIONS: tuple[Option, ...] = (
    Option("device", text, "auto", "torch device: auto, cpu, cuda, cuda:1, mps", "DEV"),
    Option("seed", nonneg_int, 0, "seed of every random choice", "N"),
    Option("threads", nonneg_int, 0, "CPU threads of torch (0: torch's default)", "N"),
    Option("out", text, None, "write results (JSON, CSV, PNG plots) to this directory", "DIR"),
    Option("no_progress", bool, False, "hide progress bars", flag=True),
    Option("debug", bool, False, "show tracebacks of failures", flag=True),
)
CONFIG_OPTION = Option(
    "config", text, None, "TOML file with option values (command line wins)", "FILE.toml"
)


def resolve_device(name: str) -> Any:
    """``"auto"`` → cuda if available, else mps, else cpu; otherwise validate ``name``."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise CLIError(
            f"--device: invalid device {name!r}; use auto, cpu, cuda[:i] or mps"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device: {name!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(
                f"--device: {name!r} out of range; {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise CLIError(f"--device: {name!r} requested but MPS is not available")
    elif dev.type != "cpu":
        raise CLIError(f"--device: unsupported device type {dev.type!r}; use cpu, cuda or mps")
    return dev


# --------------------------------------------------------------------------- info
RUNNER_MODULES: tuple[str, ...] = ("manifold_lowrank.cli.demo",)
"""Modules whose import registers method runners (see :mod:`manifold_lowrank.cli.registry`)."""


def load_runners() -> None:
    """Import every module of :data:`RUNNER_MODULES` (idempotent)."""
    for name in RUNNER_MODULES:
        importlib.import_module(name)


def _run_info(config: dict[str, Any], ctx: Context) -> int:
    from manifold_lowrank.cli.info import collect_info, format_info
    from manifold_lowrank.cli.output import write_json

    load_runners()
    info = collect_info()
    if config["json"]:
        import json

        ctx.print(json.dumps(info, indent=2))
    else:
        ctx.print(format_info(info))
    if ctx.out is not None:
        path = write_json(ctx.out / "info.json", info)
        ctx.print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------- demo
DEMO_SIZES = {  # (m, n, rank, steps) of the default and of --quick
    "default": (300, 200, 6, 300),
    "quick": (60, 40, 3, 40),
}


def _run_demo(config: dict[str, Any], ctx: Context) -> int:
    from manifold_lowrank.cli import demo
    from manifold_lowrank.cli.output import format_table, plot_histories, write_csv, write_json
    from manifold_lowrank.cli.registry import REGISTRY

    size = DEMO_SIZES["quick" if config["quick"] else "default"]
    for key, value in zip(("m", "n", "rank", "steps"), size):
        if config[key] is None:
            config[key] = value
    if config["rank"] > min(config["m"], config["n"]):
        raise CLIError(f"--rank must be <= min(m, n) = {min(config['m'], config['n'])}")
    if config["methods"] is None:
        methods = [r.name for r in REGISTRY.runners("demo") if r.default and r.available]
    else:
        try:
            methods = [REGISTRY.get(name, group="demo").name for name in config["methods"]]
        except ValueError as exc:
            raise CLIError(f"--methods: {exc}") from None
    tasks = list(demo.TASKS) if config["task"] == "all" else [config["task"]]

    ctx.print(
        f"demo: {', '.join(tasks)} on the fixed-rank manifold, "
        f"m={config['m']} n={config['n']} r={config['rank']}, {config['steps']} steps, "
        f"device={config['device']}, dtype={config['dtype']}, seed={config['seed']}"
    )
    rows: list[dict[str, Any]] = []
    for task in tasks:
        problem = demo.make_problem({**config, "task": task})
        run_cfg = {**config, "task": task, "problem": problem, "progress_factory": ctx.progress}
        task_rows = [demo.run_method(name, run_cfg) for name in methods]
        rows.extend(task_rows)
        metric = problem.metric_name
        header = (
            "relative error ||X - M||_F / ||M||_F over all entries"
            if task == "completion"
            else "optimality gap (f - f*) / f*"
        )
        ctx.print(f"\n{task}: {header}")
        ctx.print(
            format_table(
                task_rows, ["method", metric, "steps", "time_s", "ms_per_step", "orth_error"]
            )
        )
        if ctx.out is not None:
            png = plot_histories(
                ctx.out / f"demo_{task}.png",
                task_rows,
                title=f"{task} (m={config['m']}, n={config['n']}, r={config['rank']})",
                ylabel=metric.replace("_", " "),
            )
            if png is not None:
                ctx.print(f"wrote {png}")
    if ctx.out is not None:
        settings = {k: v for k, v in config.items() if k not in ("problem", "progress_factory")}
        write_json(ctx.out / "demo.json", {"config": settings, "results": rows})
        write_csv(ctx.out / "demo.csv", rows)
        ctx.print(f"wrote {ctx.out / 'demo.json'} and {ctx.out / 'demo.csv'}")
    return 0


COMMANDS: dict[str, Command] = {
    "info": Command(
        "info",
        "versions, device, offline datasets/models and available methods",
        (Option("json", bool, False, "print JSON instead of text", flag=True),),
        _run_info,
    ),
    "demo": Command(
        "demo",
        "compare optimizers on the fixed-rank manifold (the main job)",
        (
            Option("task", choice("completion", "approximation", "all"), "all", "problem", "T"),
            Option("methods", method_list, None, "comma-separated methods (see 'info')", "A,B"),
            Option("m", positive_int, None, "rows (default 300; quick 60)", "M"),
            Option("n", positive_int, None, "columns (default 200; quick 40)", "N"),
            Option("rank", positive_int, None, "rank r (default 6; quick 3)", "R"),
            Option("steps", positive_int, None, "optimizer steps (default 300; quick 40)", "K"),
            Option("sample_rate", fraction, 0.3, "completion: observed fraction p", "P"),
            Option("cond", positive_float, 10.0, "condition number of the target", "C"),
            Option("noise", nonneg_float, 0.1, "approximation: relative noise level", "E"),
            Option("dtype", choice("float32", "float64"), "float64", "dtype", "T"),
            Option("quick", bool, False, "tiny sizes for a smoke test (seconds)", flag=True),
        ),
        _run_demo,
        description="Low-rank matrix completion and approximation with every registered "
        "method, started from the same point with the same step budget.",
    ),
}
"""The subcommands, by name. A new subcommand is one more :class:`Command` entry."""


class _Parser(argparse.ArgumentParser):
    """Reports errors as :class:`CLIError` (one line, handled by :func:`main`)."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (global options accepted before and after the subcommand)."""
    from manifold_lowrank import __version__

    common = _Parser(add_help=False)
    for opt in (*GLOBAL_OPTIONS, CONFIG_OPTION):
        opt.add_to(common)
    parser = _Parser(
        prog=PROG,
        description="Optimization on low-rank manifolds and rank-adaptive training.",
        parents=[common],
        epilog=f"Run '{PROG} demo' for the main job, '{PROG} COMMAND --help' for options.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for cmd in COMMANDS.values():
        p = sub.add_parser(
            cmd.name, help=cmd.help, description=cmd.description or cmd.help, parents=[common]
        )
        for opt in cmd.options:
            opt.add_to(p)
    return parser


def _progress_factory(disabled: bool) -> Callable[..., Any] | None:
    if disabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    # disable=None: bars only on a terminal, never in logs or pipes.
    return functools.partial(tqdm, leave=False, disable=None, file=sys.stderr, dynamic_ncols=True)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Use ``n`` torch CPU threads inside the block (``0``: leave as is), then restore."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``manifold-lowrank``; returns the exit status."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        try:
            ns = parser.parse_args(argv)
        except SystemExit as exc:  # --help / --version
            return int(exc.code or 0)
        given = {k: v for k, v in vars(ns).items() if k != "command"}
        if ns.command is None:
            parser.print_help()
            return 0
        cmd = COMMANDS[ns.command]
        config_file = given.pop("config", None)
        config = resolve(
            GLOBAL_OPTIONS,
            cmd.name,
            cmd.options,
            given,
            load_toml(config_file) if config_file else None,
            commands=list(COMMANDS),
            source=str(config_file),
        )
        debug = config["debug"]
        config["device"] = str(resolve_device(config["device"]))
        out = None
        if config["out"] is not None:
            from manifold_lowrank.cli.output import prepare_out_dir

            out = prepare_out_dir(config["out"])
        ctx = Context(out=out, progress=_progress_factory(config["no_progress"]))
        with _torch_threads(config["threads"]):
            t0 = time.perf_counter()
            status = cmd.run(config, ctx)
        if cmd.name != "info":
            ctx.print(f"\n{cmd.name} finished in {time.perf_counter() - t0:.1f} s")
        return status
    except CLIError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        msg = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"{PROG}: failed: {type(exc).__name__}: {msg}"
            + ("" if debug else " (run with --debug for the traceback)"),
            file=sys.stderr,
        )
        return 1
