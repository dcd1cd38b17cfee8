"""Sphinx configuration of txpika's guides (docs/build.py runs Sphinx after pydoctor).

The API reference is pydoctor's (docs/_build/html/api/); the guides link into it through its
objects.inv, and to Twisted and Python through the inventories docs/build.py writes from
docs/external.txt. Single backticks are cross-references here as in the docstrings.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
BUILD = DOCS / "_build"

project = "txpika"
author = "txpika maintainers"
copyright = "txpika maintainers"
release = re.search(
    r'^__version__ = "([^"]+)"', (ROOT / "txpika" / "__init__.py").read_text(), re.M
).group(1)  # type: ignore[union-attr]
version = release

extensions = ["sphinx.ext.intersphinx"]
default_role = "py:obj"
nitpicky = True
exclude_patterns = ["_build", "build.py", "external.txt", "requirements.txt"]
root_doc = "index"
html_theme = "alabaster"
html_theme_options = {
    "description": "A Twisted-native AMQP 0-9-1 client",
    "extra_nav_links": {"API reference": "api/index.html"},
    "fixed_sidebar": True,
}
html_static_path: list[str] = []
html_copy_source = False
pygments_style = "sphinx"
highlight_language = "text"

# The API reference (built just before, into the output directory) and the external names.
intersphinx_mapping = {
    "txpika": ("api/", str(BUILD / "html" / "api" / "objects.inv")),
    "python": ("https://docs.python.org/3/", str(BUILD / "inventories" / "python.inv")),
    "twisted": (
        "https://docs.twisted.org/en/stable/api/",
        str(BUILD / "inventories" / "twisted.inv"),
    ),
}
intersphinx_disabled_reftypes = ["std:doc"]

# Guides that other work adds (the asyncio adapter, writing an adapter, operating daemons)
# are listed in index.rst's toctree in reading order; a page not written yet is left out
# of the toctree instead of breaking the build.
_OPTIONAL = ("guides/asyncio", "guides/writing-an-adapter", "guides/operating")


def _drop_missing_pages(app: Any, docname: str, source: list[str]) -> None:
    if docname != "index":
        return
    lines = []
    for line in source[0].splitlines(keepends=True):
        entry = line.strip()
        if entry in _OPTIONAL and not (DOCS / f"{entry}.rst").exists():
            continue
        lines.append(line)
    source[0] = "".join(lines)


def _package_aliases() -> dict[str, str]:
    """``txpika.Channel`` -> ``txpika.channel.Channel``, for every name txpika/__init__.py
    imports (its lazy names included), read from the source."""
    tree = ast.parse((ROOT / "txpika" / "__init__.py").read_text())
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("txpika"):
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    # The lazy names' modules: private ones are where pydoctor documents them under txpika.
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("txpika._"):
            for alias in node.names:
                aliases.pop(alias.asname or alias.name, None)
    return aliases


_ALIASES = _package_aliases()


def _resolve_package_alias(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve ``txpika.Channel`` (as users import it) to where the reference documents
    it, ``txpika.channel.Channel``."""
    from sphinx.ext import intersphinx

    target = node.get("reftarget", "")
    parts = target.split(".")
    if len(parts) < 2 or parts[0] != "txpika" or parts[1] not in _ALIASES:
        return None
    moved = node.deepcopy()
    moved["reftarget"] = ".".join([_ALIASES[parts[1]], *parts[2:]])
    return intersphinx.missing_reference(app, env, moved, contnode)


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", _drop_missing_pages)
    app.connect("missing-reference", _resolve_package_alias)
    return {"parallel_read_safe": True}
