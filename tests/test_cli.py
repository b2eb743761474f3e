"""Tests of the ``manifold-lowrank`` command line (in-process through ``main`` and once
through a subprocess)."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from manifold_lowrank import __version__
from manifold_lowrank.cli import COMMANDS, main
from manifold_lowrank.cli.config import (
    fraction,
    method_list,
    nonneg_int,
    positive_float,
    positive_int,
)
from manifold_lowrank.cli.output import format_table, write_csv, write_json
from manifold_lowrank.cli.registry import Registry, UnknownRunnerError

# Tiny, single-threaded settings: every demo call below takes well under a second of work.
QUICK = ["--threads", "1", "--no-progress", "demo", "--quick"]
DEMO_METHODS = [
    "svd",
    "fixedrank-rsgd",
    "fixedrank-radam",
    "fixedrank-geoopt-radam",
    "geoopt-stiefel",
    "euclidean-adam",
]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_user_error(status: int, err: str, *needles: str) -> None:
    """Bad input: status 2, exactly one line on stderr, no traceback."""
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("manifold-lowrank: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


# --------------------------------------------------------------------------- top level
def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--help")
    assert status == 0
    for name in COMMANDS:
        assert name in out
    status, out, _ = run(capsys, "--version")
    assert status == 0 and out.strip() == f"manifold-lowrank {__version__}"
    status, out, _ = run(capsys)  # no subcommand: help, success
    assert status == 0 and "usage: manifold-lowrank" in out
    status, out, _ = run(capsys, "demo", "--help")
    assert status == 0 and "--sample-rate" in out and "--seed" in out


# --------------------------------------------------------------------------- info
def test_info_text_lists_versions_devices_datasets_models_methods(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = run(capsys, "info")
    assert status == 0, err
    assert f"torch                {importlib.metadata.version('torch')}" in out
    assert f"geoopt               {importlib.metadata.version('geoopt')}" in out
    assert f"tensorly             {importlib.metadata.version('tensorly')}" in out
    for name in ("mnist5k", "digits", "all-MiniLM-L6-v2", *DEMO_METHODS):
        assert name in out
    assert "cuda" in out and "default" in out


def test_info_json_and_out(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, err = run(capsys, "--out", str(tmp_path), "info", "--json")
    assert status == 0, err
    info = json.loads(out[: out.rindex("}") + 1])
    assert info["manifold_lowrank"] == __version__
    assert info["packages"]["torch"] == importlib.metadata.version("torch")
    assert info["device"]["cuda"] == torch.cuda.is_available()
    datasets = {d["name"]: d for d in info["datasets"]}
    sklearn_installed = importlib.util.find_spec("sklearn") is not None
    assert datasets["digits"]["available"] == sklearn_installed
    assert {m["name"] for m in info["methods"]} >= set(DEMO_METHODS)
    assert json.loads((tmp_path / "info.json").read_text()) == info


# --------------------------------------------------------------------------- demo
def test_demo_all_methods_known_optima_and_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "results"
    status, out, err = run(capsys, "--out", str(out_dir), "--seed", "3", *QUICK)
    assert status == 0, err
    assert "completion" in out and "approximation" in out and "demo finished" in out

    payload = json.loads((out_dir / "demo.json").read_text())
    assert payload["config"]["seed"] == 3 and payload["config"]["quick"] is True
    results = payload["results"]
    assert [(r["task"], r["method"]) for r in results] == [
        (t, m) for t in ("completion", "approximation") for m in DEMO_METHODS
    ]
    eps = torch.finfo(torch.float64).eps
    for task in ("completion", "approximation"):
        rows = [r for r in results if r["task"] == task]
        # Every method starts from the same point with the same budget.
        starts = {r["history"]["value"][0] for r in rows}
        assert max(starts) - min(starts) <= 100 * eps * max(starts)
        budget = {r["method"]: r["steps"] for r in rows}
        if task == "approximation":
            assert budget.pop("svd") == 1  # the truncated SVD is exact in one step
        assert set(budget.values()) == {40}
        for r in rows:
            if r["orth_error"] is not None:  # bases stay orthonormal
                assert r["orth_error"] < 1e-12
    approx = {r["method"]: r for r in results if r["task"] == "approximation"}
    # Eckart-Young: nothing beats the truncated SVD; it is optimal after one step.
    for r in approx.values():
        assert r["gap"] >= -1e-10
    assert approx["svd"]["gap"] <= 1e-10
    # A Riemannian gradient step of size 1/2 contracts the error by 1/2 per step on this
    # problem (the Hessian is the identity on the tangent space): 40 steps reach rounding.
    assert approx["fixedrank-rsgd"]["gap"] < 1e-8
    # geoopt's RiemannianAdam and ours are the same algorithm on FixedRank.
    assert approx["fixedrank-radam"]["gap"] == pytest.approx(
        approx["fixedrank-geoopt-radam"]["gap"], rel=1e-6
    )

    with (out_dir / "demo.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(results)
    assert float(rows[0]["rel_error"]) == pytest.approx(results[0]["rel_error"])
    if importlib.util.find_spec("matplotlib") is not None:
        for task in ("completion", "approximation"):
            png = out_dir / f"demo_{task}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_is_deterministic_and_seed_matters(capsys: pytest.CaptureFixture[str]) -> None:
    def errors(seed: str) -> list[float]:
        status, out, err = run(
            capsys, "--seed", seed, *QUICK, "--task", "completion", "--methods", "svd"
        )
        assert status == 0, err
        line = next(ln for ln in out.splitlines() if ln.startswith("svd"))
        return [float(line.split()[1])]

    assert errors("1") == errors("1")
    assert errors("1") != errors("2")


def test_config_file_and_command_line_precedence(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        'seed = 5\n\n[demo]\nsteps = 4\nmethods = ["svd"]\ntask = "approximation"\nquick = true\n'
    )
    out_dir = tmp_path / "out"
    status, _, err = run(
        capsys, "--config", str(cfg), "--out", str(out_dir), "--threads", "1", "demo"
    )
    assert status == 0, err
    config = json.loads((out_dir / "demo.json").read_text())["config"]
    assert (config["seed"], config["steps"], config["methods"]) == (5, 4, ["svd"])
    # The command line wins over the file.
    status, _, err = run(
        capsys, "--config", str(cfg), "--out", str(out_dir), "demo", "--steps", "2"
    )
    assert status == 0, err
    config = json.loads((out_dir / "demo.json").read_text())["config"]
    assert (config["seed"], config["steps"]) == (5, 2)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["frobnicate"], ["invalid choice", "frobnicate"]),
        (["demo", "--methods", "svd,nope"], ["unknown method 'nope'", "fixedrank-rsgd"]),
        (["demo", "--steps", "0"], ["--steps", ">= 1"]),
        (["demo", "--steps", "ten"], ["--steps", "'ten'"]),
        (["--seed", "-1", "demo"], ["--seed", ">= 0"]),
        (["demo", "--sample-rate", "1.5"], ["--sample-rate", "(0, 1]"]),
        (["demo", "--cond", "nan"], ["--cond"]),
        (["demo", "--task", "sorting"], ["--task", "completion"]),
        (["demo", "--quick", "--rank", "50"], ["--rank", "min(m, n) = 40"]),
        (["--device", "tpu9", "info"], ["--device"]),
        (["--config", "/nonexistent/run.toml", "info"], ["file not found"]),
    ],
)
def test_bad_input_is_one_line_without_traceback(
    capsys: pytest.CaptureFixture[str], argv: list[str], needles: list[str]
) -> None:
    status, _, err = run(capsys, *argv)
    assert_user_error(status, err, *needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_cuda_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "--device", "cuda", "info")
    assert_user_error(status, err, "CUDA is not available")


def test_unwritable_out_is_a_user_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    status, _, err = run(capsys, "--out", str(a_file), *QUICK)
    assert_user_error(status, err, "--out", "not a directory")
    # A directory below a regular file can never be created, even by root.
    status, _, err = run(capsys, "--out", str(a_file / "sub"), *QUICK)
    assert_user_error(status, err, "--out", "cannot write")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("steps = [", "not valid TOML"),
        ("colour = 1", "unknown key 'colour'"),
        ("[demo]\nsteps = -3", "steps"),
        ("[demo]\nsteps = 2.5", "steps"),
        ("[demo]\nmethods = [1, 2]", "methods"),
        ("[demo]\nquick = 'yes'", "quick"),
        ("[demo]\nwidth = 3", "unknown key 'width'"),
        ("demo = 3", "[demo] must be a table"),
    ],
)
def test_bad_config_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, needle: str
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    status, _, err = run(capsys, "--config", str(cfg), *QUICK)
    assert_user_error(status, err, needle)


def test_subprocess_entry_points(tmp_path: Path) -> None:
    """``python -m manifold_lowrank`` runs the job; bad input exits 2 with one line."""
    ok = subprocess.run(
        [sys.executable, "-m", "manifold_lowrank", *QUICK, "--methods", "svd", "--steps", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert "demo finished" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "manifold_lowrank.cli", "demo", "--steps", "-2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- units
def test_converters_accept_cli_strings_and_toml_values() -> None:
    assert positive_int("7") == positive_int(7) == 7
    assert nonneg_int("0") == 0
    assert fraction("1") == 1.0 and fraction(0.25) == 0.25
    assert positive_float("1e3") == 1000.0
    assert method_list("a, b,,a") == ["a", "b"] == method_list(["a", "b"])
    for conv, bad in [
        (positive_int, True),
        (positive_int, 1.5),
        (positive_int, "1.0"),
        (nonneg_int, -1),
        (fraction, 0),
        (positive_float, "inf"),
        (positive_float, math.nan),
        (method_list, ""),
        (method_list, 3),
    ]:
        with pytest.raises(ValueError):
            conv(bad)


def test_registry_contract() -> None:
    reg = Registry()

    @reg.register("a", group="demo", description="first")
    def run_a(config):  # type: ignore[no-untyped-def]
        return {"method": "a", "x": config["x"]}

    reg.register("b", group="train", requires=("surely_not_a_real_module_xyz",))(run_a)
    assert reg.names() == ["a", "b"] and reg.names("demo") == ["a"]
    assert reg.groups() == ["demo", "train"] and "a" in reg and len(reg) == 2
    assert reg.get("a")({"x": 3}) == {"method": "a", "x": 3}
    assert not reg.get("b").available
    with pytest.raises(RuntimeError, match="surely_not_a_real_module_xyz"):
        reg.get("b")({"x": 1})
    with pytest.raises(UnknownRunnerError, match="choose from: a"):
        reg.get("b", group="demo")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", group="demo")(run_a)
    with pytest.raises(ValueError, match="without spaces or commas"):
        reg.register("x,y", group="demo")(run_a)


def test_table_csv_json_helpers(tmp_path: Path) -> None:
    rows = [
        {"method": "a", "err": 1e-9, "n": 3, "history": {"value": [1.0]}},
        {"method": "bb", "err": math.inf, "extra": True},
    ]
    table = format_table(rows).splitlines()
    assert table[0].split() == ["method", "err", "n", "extra"]
    assert table[2].split() == ["a", "1.00e-09", "3", "-"]
    assert table[3].split() == ["bb", "inf", "-", "yes"]
    assert format_table([]) == "(no results)"
    with write_csv(tmp_path / "t.csv", rows).open() as fh:
        got = list(csv.DictReader(fh))
    assert got[0] == {"method": "a", "err": "1e-09", "n": "3", "extra": ""}
    data = json.loads(write_json(tmp_path / "t.json", {"rows": rows}).read_text())
    assert data["rows"][1]["err"] == "inf"  # valid JSON: no bare Infinity
