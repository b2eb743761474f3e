"""The documentation stays true to the code: API pages cover every public name, the
examples in README and docs run, citations resolve, README and CI agree."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _load_apigen():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("apigen", DOCS / "_ext" / "apigen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


apigen = _load_apigen()


def test_api_pages_cover_every_public_name_exactly_once(tmp_path: Path) -> None:
    pages = apigen.write_api_pages(tmp_path)
    names = apigen.subpackages()
    assert {p.stem for p in pages} == {*names, "index"}
    index = (tmp_path / "index.rst").read_text()
    assert all(f"   {n}\n" in index for n in names)

    documented: dict[str, str] = {}  # object id -> where
    for short in names:
        fullname = f"manifold_lowrank.{short}"
        text = (tmp_path / f"{short}.rst").read_text()
        module = importlib.import_module(fullname)
        reexported = dict(apigen.reexports(fullname))
        for name in apigen.public_names(module):
            if name in reexported:  # documented where it is defined, referenced here
                assert reexported[name] in text
                continue
            assert re.search(rf"^   {re.escape(name)}$", text, re.M), f"{fullname}.{name}"
        for modname, entries in apigen.api_entries(fullname):
            mod = importlib.import_module(modname)
            for name in entries:
                obj = getattr(mod, name)
                # A class documented under two names registers its canonical name twice:
                # a "duplicate object description" warning that breaks -W. (Function
                # aliases such as get_peft_model = get_adapter_model are fine.)
                if isinstance(obj, type):
                    where = f"{modname}.{name}"
                    assert id(obj) not in documented, (where, documented.get(id(obj)))
                    documented[id(obj)] = where


def test_api_pages_are_ordered_by_layer() -> None:
    names = apigen.subpackages()
    known = [n for n in names if n in apigen.LAYER_ORDER]
    assert known == sorted(known, key=apigen.LAYER_ORDER.index)
    assert names[: len(known)] == known  # unknown ones come last


def test_stale_generated_pages_are_removed(tmp_path: Path) -> None:
    (tmp_path / "gone.rst").write_text("old page")
    (tmp_path / "manifold_lowrank.linalg.removed_function.rst").write_text("old stub")
    apigen.write_api_pages(tmp_path)
    assert not (tmp_path / "gone.rst").exists()
    assert not (tmp_path / "manifold_lowrank.linalg.removed_function.rst").exists()


# --------------------------------------------------------------------------- examples
def _python_blocks(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return re.findall(r"```python\n(.*?)```", text, re.S)
    blocks = []
    for match in re.finditer(r"^\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text, re.M):
        lines = [ln[4:] for ln in match.group(1).splitlines()]
        blocks.append("\n".join(lines).strip() + "\n")
    return blocks


EXAMPLE_FILES = [
    ROOT / "README.md",
    DOCS / "getting_started.rst",
    *sorted((DOCS / "user_guide").glob("*.rst")),
]
EXAMPLES = [
    pytest.param(block, id=f"{path.relative_to(ROOT)}#{i}")
    for path in EXAMPLE_FILES
    for i, block in enumerate(_python_blocks(path))
    # Blocks with placeholders ("MyManifold(...)") are sketches, not programs.
    if "..." not in block
]


def test_examples_were_found() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("source", EXAMPLES)
def test_documented_examples_run(source: str, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(source, "<doc example>", "exec"), {"__name__": "__doc_example__"})
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()


# --------------------------------------------------------------------------- citations
def test_every_cited_reference_is_in_the_bibliography() -> None:
    theory = (DOCS / "theory.rst").read_text(encoding="utf-8")
    defined = set(re.findall(r"^\.\. \[([A-Za-z0-9]+)\] ", theory, re.M))
    cited: set[str] = set()
    for path in DOCS.rglob("*.rst"):
        if "_build" in path.parts or "generated" in path.parts:
            continue
        cited |= set(re.findall(r"\[([A-Za-z][A-Za-z0-9]*)\]_", path.read_text()))
    assert cited <= defined, f"undefined citations: {sorted(cited - defined)}"
    assert defined <= cited, f"bibliography entries never cited: {sorted(defined - cited)}"
    for key in [
        "Schotthoefer2022",
        "LubichOseledets2014",
        "CerutiLubich2022",
        "CerutiKuschLubich2022",
        "CerutiKuschLubich2024",
        "GeoLoRA2025",
        "dEBORA2025",
        "RACLoRA2024",
        "BernoulliLoRA2025",
        "TDLRT2023",
        "AbsilOseledets2015",
        "Vandereycken2013",
        "KochLubich2010",
        "AdaLoRA2023",
        "LoRA2021",
    ]:
        assert key in defined


# --------------------------------------------------------------------------- README / CI
def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```bash\n(python3 -m venv .*)\n```", readme)


def test_readme_setup_commands_and_ci_agree() -> None:
    commands = _readme_commands()
    main_job = [c for c in commands if c.endswith("manifold-lowrank demo")]
    tests = [c for c in commands if "pytest" in c]
    assert len(main_job) == 1 and len(tests) == 1
    assert 'pip install -c constraints.txt -e ".[data]"' in main_job[0]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    # CI runs the README's test command itself: the install part and the pytest part.
    install, _, pytest_cmd = tests[0].partition(" && python -m pytest")
    install_part = install.split(" && ", 2)[-1]
    assert install_part.startswith("pip install -c constraints.txt")
    assert install_part in ci
    assert "python -m pytest" + pytest_cmd in ci
    assert "python -m sphinx -W --keep-going -b html docs docs/_build/html" in ci
    assert ci.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in ci


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell script")
def test_ci_script_is_executable_bash() -> None:
    import os
    import shutil
    import subprocess

    ci = ROOT / ".ci" / "run"
    assert os.access(ci, os.X_OK)
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not installed")
    res = subprocess.run([bash, "-n", str(ci)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
