"""Architecture and packaging: layer order of imports, public names, metadata."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import manifold_lowrank

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "manifold_lowrank"

# Layer of every top-level subpackage/module (DESIGN.md): a module may import only from
# layers with a number <= its own, and within one number only as listed in SAME_LAYER.
LAYERS: dict[str, float] = {
    "linalg": 1,
    "manifolds": 2,
    "testing": 2.5,  # the conformance kit sits beside manifolds and may import it
    "integrators": 3,
    "nn": 4,
    "optim": 5,
    "checkpoint": 5.5,  # training checkpoints of models + optimizers
    "adapters": 6,
    "distributed": 7,
    # applications
    "problems": 8,
    "datasets": 8,
    "cli": 9,
    "__main__": 10,
}
TOP = "__init__"  # manifold_lowrank/__init__.py: may import only from linalg..distributed
TOP_LEVEL_MODULES = {info.name for info in pkgutil.iter_modules([str(PACKAGE)])}


def _layer_of(module: str) -> str:
    """``manifold_lowrank.optim.geolora`` -> ``optim``; the root package -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else TOP


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every ``manifold_lowrank`` import in ``path``."""
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    return _imports_in(path.read_text(encoding="utf-8"), package)


def _imports_in(source: str, package: str) -> list[tuple[int, str]]:
    """Absolute and relative ``manifold_lowrank`` imports of ``source`` (a module of
    ``package``), including those inside functions and ``TYPE_CHECKING`` blocks."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            # "from manifold_lowrank import optim" imports the subpackage optim.
            if target == "manifold_lowrank":
                out += [
                    (node.lineno, f"manifold_lowrank.{a.name}")
                    for a in node.names
                    if a.name in TOP_LEVEL_MODULES
                ]
    return sorted((line, mod) for line, mod in out if mod.split(".")[0] == "manifold_lowrank")


def _source_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_top_level_module_has_a_layer() -> None:
    missing = sorted(n for n in TOP_LEVEL_MODULES if n not in LAYERS)
    assert not missing, (
        f"new top-level module(s) {missing}: add them to LAYERS in tests/test_packaging.py "
        "(and to LAYER_ORDER in docs/_ext/apigen.py) at their place in the layer order"
    )


def test_no_upward_imports_between_layers() -> None:
    violations = []
    for path in _source_files():
        src = _layer_of(_module_name(path))
        for line, target in _imports(path):
            dst = _layer_of(target)
            if dst == TOP or dst == src:
                continue
            if src == TOP:
                ok = LAYERS.get(dst, 99) <= LAYERS["distributed"]
            else:
                ok = LAYERS.get(dst, 99) <= LAYERS.get(src, 99)
            if not ok:
                violations.append(f"{path.relative_to(ROOT)}:{line}: {src} imports {target}")
    assert not violations, "upward imports:\n" + "\n".join(violations)


def test_import_analysis_sees_relative_nested_and_from_package_imports() -> None:
    """The checker itself must see every kind of import, or the test above proves nothing."""
    source = (
        "from ..optim import x\n"
        "from . import qr\n"
        "from manifold_lowrank import nn\n"
        "def f():\n"
        "    import manifold_lowrank.adapters.model as m\n"
        "import torch\n"
    )
    assert _imports_in(source, "manifold_lowrank.linalg") == [
        (1, "manifold_lowrank.optim"),
        (2, "manifold_lowrank.linalg"),
        (3, "manifold_lowrank"),
        (3, "manifold_lowrank.nn"),
        (5, "manifold_lowrank.adapters.model"),
    ]


def test_lower_layers_do_not_load_upper_layers_at_import() -> None:
    """Importing a layer must not pull in a higher layer (checked in a fresh process), and
    linalg depends on torch only."""
    code = (
        "import json, sys\n"
        "out = {}\n"
        "for name in ['linalg', 'manifolds', 'integrators']:\n"
        "    __import__('manifold_lowrank.' + name)\n"
        "    out[name] = sorted({m.split('.')[1] for m in sys.modules\n"
        "                        if m.startswith('manifold_lowrank.')})\n"
        "    if name == 'linalg':\n"
        "        geoopt_after_linalg = 'geoopt' in sys.modules\n"
        "print(json.dumps({'layers': out, 'geoopt_after_linalg': geoopt_after_linalg}))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr
    loaded = json.loads(res.stdout)
    for name, mods in loaded["layers"].items():
        above = [m for m in mods if LAYERS.get(m, 99) > LAYERS[name]]
        assert not above, f"import manifold_lowrank.{name} loads {above}"
    assert loaded["geoopt_after_linalg"] is False, "linalg must depend on torch only"


def _public_modules() -> list[str]:
    return [
        f"manifold_lowrank.{info.name}"
        for info in pkgutil.iter_modules(manifold_lowrank.__path__)
        if not info.name.startswith("_")
    ]


@pytest.mark.parametrize("name", _public_modules())
def test_public_names_exist_and_are_unique(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} must define __all__"
    assert len(exported) == len(set(exported)), f"duplicates in {name}.__all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists missing names {missing}"


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_metadata_version_entry_point_extras() -> None:
    meta = _pyproject()["project"]
    assert meta["version"] == manifold_lowrank.__version__
    assert meta["scripts"]["manifold-lowrank"] == "manifold_lowrank.cli:main"
    module, _, attr = meta["scripts"]["manifold-lowrank"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    extras = meta["optional-dependencies"]
    assert {"test", "docs", "hf", "bench", "data"} <= set(extras)
    assert any(req.startswith("pytest-xdist") for req in extras["test"])
    assert any(req.startswith("myst-parser") for req in extras["docs"])
    assert "torch>=2.1" in meta["dependencies"]
    # The CPU wheel pin lives in constraints.txt, not in the package metadata.
    pins = (ROOT / "constraints.txt").read_text().split()
    assert "torch==2.13.0" in pins


def test_license_is_bsd3() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "BSD 3-Clause License" in text and "manifold_lowrank developers" in text
    assert _pyproject()["project"]["license"] == {"text": "BSD-3-Clause"}


def test_installed_distribution_matches_source() -> None:
    try:
        dist = importlib.metadata.distribution("manifold-lowrank")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("package not installed (running from a source tree)")
    assert dist.version == manifold_lowrank.__version__
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts.get("manifold-lowrank") == "manifold_lowrank.cli:main"
