"""README.md stays true: its examples run, its links resolve, its command lines parse.

The Python blocks themselves are executed by ``tests/test_docs_api.py``
(``test_documented_examples_run``, which skips blocks containing ``...``); here we make
sure none is skipped that way and that the README keeps the sections other tools rely on.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def test_one_runnable_python_example_per_kind_of_user() -> None:
    blocks = _blocks("python")
    assert all("..." not in b for b in blocks), "a '...' block would be skipped by test_docs_api"
    text = "\n".join(blocks)
    assert "manifold_lowrank.optim import RiemannianSGD" in text  # optimizer API on a manifold
    assert "get_adapter_model" in text  # fine-tuning with the adapter API
    assert "check_manifold" in text  # adding a manifold


def test_demo_table_placeholder_and_tutorial_link() -> None:
    assert "## The demo's output" in README
    assert README.count("<!-- demo-table -->") == 1
    section = README.split("## The demo's output", 1)[1].split("\n## ", 1)[0]
    assert "<!-- demo-table -->" in section
    assert "(tutorials/plot_custom_manifold.py)" in README


def test_relative_links_resolve() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [ln for ln in links if not re.match(r"[a-z]+://", ln)]
    assert len(local) >= 8
    missing = [ln for ln in local if not (ROOT / ln).exists()]
    assert not missing, f"README links to missing files: {missing}"


def _command_lines() -> list[str]:
    lines = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            cmd = line.split("  #", 1)[0].strip()
            if cmd.startswith("manifold-lowrank"):
                lines.append(cmd)
            elif " && manifold-lowrank " in cmd:
                lines.append("manifold-lowrank " + cmd.split(" && manifold-lowrank ", 1)[1])
    return lines


def test_command_lines_parse() -> None:
    """Every ``manifold-lowrank …`` line of the README is accepted by the CLI's parser
    (subcommand and option names; nothing is run)."""
    from manifold_lowrank import cli

    parser = cli.build_parser()
    lines = _command_lines()
    assert len(lines) >= 5
    commands = set()
    for line in lines:
        argv = shlex.split(line)[1:]
        try:
            ns = parser.parse_args(argv)
        except (SystemExit, cli.CLIError) as exc:  # pragma: no cover - the failure message
            pytest.fail(f"README command {line!r} is rejected by the CLI: {exc}")
        commands.add(ns.command)
    assert {"demo", "info", "train", "finetune", "compare"} <= commands
