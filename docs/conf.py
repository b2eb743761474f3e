"""Sphinx configuration of the manifold_lowrank documentation.

Build (warnings are errors, as in CI)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

* The API reference is generated at build time from the package itself
  (``docs/_ext/apigen.py``): every public name of every subpackage gets a page.
* Tutorials are the sphinx-gallery scripts ``tutorials/plot_*.py``; they are executed
  during the build and any error aborts it.
* Intersphinx works offline: each mapping has a local, empty fallback inventory, so an
  unreachable site is logged as information and not as a warning.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

import apigen

import manifold_lowrank

# -- project ------------------------------------------------------------------------
project = "manifold_lowrank"
author = "manifold_lowrank developers"
copyright = "manifold_lowrank developers, BSD-3-Clause"
release = manifold_lowrank.__version__
version = ".".join(release.split(".")[:2])

# -- extensions -----------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]
templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "**.ipynb_checkpoints",
    "auto_tutorials/*.py",
    "auto_tutorials/*.ipynb",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
language = "en"

# -- API reference (generated at build time) ----------------------------------------
apigen.write_api_pages(DOCS / "api" / "generated")
autosummary_generate = True
autosummary_imported_members = True
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_inherit_docstrings = False  # e.g. torch.autograd.Function.forward's own docs
autodoc_default_options = {"show-inheritance": True}

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = True  # NamedTuple "Attributes" would otherwise be documented twice
napoleon_use_rtype = False
napoleon_preprocess_types = True

# -- intersphinx (offline-safe) ---------------------------------------------------------
_OFFLINE_INV = str(DOCS / "_intersphinx" / "offline.inv")


def _inv(url: str) -> tuple[str, tuple[None, str]]:
    # First try the site; if it cannot be reached, the empty local inventory "succeeds",
    # which Sphinx logs as information instead of a warning (and links just stay plain).
    return (url, (None, _OFFLINE_INV))


intersphinx_mapping = {
    "python": _inv("https://docs.python.org/3/"),
    "torch": _inv("https://docs.pytorch.org/docs/stable/"),
    "numpy": _inv("https://numpy.org/doc/stable/"),
    "scipy": _inv("https://docs.scipy.org/doc/scipy/"),
    "geoopt": _inv("https://geoopt.readthedocs.io/en/latest/"),
    "tensorly": _inv("https://tensorly.org/stable/"),
}
intersphinx_timeout = 10

# -- sphinx-gallery -------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "../tutorials",
    "gallery_dirs": "auto_tutorials",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py|/_",
    "abort_on_example_error": True,
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib",),
    "within_subsection_order": "FileNameSortKey",
    "doc_module": ("manifold_lowrank",),
    "backreferences_dir": "gen_modules/backreferences",
    "remove_config_comments": True,
    "show_memory": False,
    "min_reported_time": 1,
}

# -- HTML -----------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"manifold_lowrank {release}"
html_static_path = []
html_theme_options = {
    "description": "Optimization on low-rank manifolds and rank-adaptive training",
    "fixed_sidebar": True,
}
myst_heading_anchors = 3


def _drop_type_docstrings(app, what, name, obj, options, lines):
    """Module-level data without a docstring would show its *type's* docstring (e.g.
    ``dict``'s), which is not reStructuredText; show nothing instead."""
    if what not in ("data", "attribute") or not lines:
        return
    type_doc = inspect.getdoc(type(obj))
    if type_doc and lines[0].strip() == type_doc.strip().splitlines()[0].strip():
        lines.clear()


def setup(app):
    app.connect("autodoc-process-docstring", _drop_type_docstrings)
