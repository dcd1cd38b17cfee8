"""Build txpika's documentation: the API reference (pydoctor) and the guides (Sphinx).

Run by ``scripts/docs`` inside its own virtualenv (docs/requirements.txt); it reads the
sources only and imports nothing from txpika or Twisted. Steps:

1. Write the inventories of the external names the docstrings and guides link to
   (docs/external.txt: Twisted, zope.interface and the standard library), so that links
   resolve without a network: docs/_build/inventories/*.inv.
2. pydoctor over the ``txpika`` package into docs/_build/html/api/ (reStructuredText
   docstrings; single backticks are cross-references, double backticks literals). Names a
   public package re-exports from a private module (``txpika.blocking.BlockingConnection``,
   ``txpika.testing.MemoryBroker``, ``txpika.connect``...) are documented where users
   import them from. Its own objects.inv lets the guides link into it.
3. Every public name (no ``_`` in its dotted path) must have a docstring, its own or one it
   inherits from a documented base in txpika, and every name in the ``__all__`` of txpika,
   txpika.blocking, txpika.errors, txpika.testing and txpika.aio (once it exists: pydoctor
   reads the whole package, so a new module is in the reference by itself) must have its
   entry in the reference.
4. Sphinx over docs/ into docs/_build/html/, nitpicky: every cross-reference must resolve.

Any warning of any step fails the build (exit status 1). ``--by-file`` prints the warnings
grouped by source file and counted, the form to hand to whoever owns the file.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import re
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
BUILD = DOCS / "_build"
HTML = BUILD / "html"
API = HTML / "api"
INVENTORIES = BUILD / "inventories"

#: Where the external names link to: inventory name -> (project, base URL).
EXTERNAL = {
    "python": ("Python", "https://docs.python.org/3/"),
    "twisted": ("Twisted", "https://docs.twisted.org/en/stable/api/"),
    "zope": ("zope.interface", "https://zopeinterface.readthedocs.io/en/latest/"),
}

#: Modules documented in the reference whose names are generated from the AMQP spec
#: (tools/gen_spec.py): their classes are documented by the generator's class docstrings;
#: their constants and fields (the spec's own names) are not held to the rule of step 3.
GENERATED = ("txpika.spec", "txpika.spec_0_8")

_WARNING = re.compile(r"^(?P<path>/[^:]+|[^\s:]+\.(?:py|rst|txt)):(?P<line>\d+)?:? ?(?P<text>.*)$")


# -- 1. external inventories ------------------------------------------------------------------


def read_external(path: Path) -> dict[str, list[tuple[str, str, str]]]:
    """Parse docs/external.txt: ``inventory role name [page]`` lines; return, per
    inventory, ``(name, role, uri)`` entries."""
    out: dict[str, list[tuple[str, str, str]]] = collections.defaultdict(list)
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) not in (3, 4) or fields[0] not in EXTERNAL:
            raise SystemExit(f"{path}:{number}: cannot read {raw!r}")
        inventory, role, name = fields[:3]
        if inventory == "twisted":
            uri = twisted_uri(role, name)
        else:
            if len(fields) != 4:
                raise SystemExit(f"{path}:{number}: {inventory} names need a page")
            page = fields[3]
            uri = page if "#" in page else f"{page}#{'module-' if role == 'module' else ''}{name}"
        out[inventory].append((name, role, uri))
    return out


def twisted_uri(role: str, name: str) -> str:
    """Where pydoctor puts ``name`` in Twisted's reference: a page per module and class, an
    anchor on its parent's page for the rest."""
    if role in ("module", "class", "exception", "interface"):
        return f"{name}.html"
    parent, _, last = name.rpartition(".")
    return f"{parent}.html#{last}"


def write_inventory(path: Path, project: str, entries: list[tuple[str, str, str]]) -> None:
    """A Sphinx objects.inv (version 2) listing ``entries``."""
    lines = []
    for name, role, uri in entries:
        sphinx_role = {"interface": "class", "exception": "exception"}.get(role, role)
        lines.append(f"{name} py:{sphinx_role} 1 {uri} -\n")
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        "# Version: \n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    path.write_bytes(header.encode() + zlib.compress("".join(lines).encode()))


def build_inventories() -> dict[str, Path]:
    INVENTORIES.mkdir(parents=True, exist_ok=True)
    paths = {}
    names = read_external(DOCS / "external.txt")
    for inventory, (project, _) in EXTERNAL.items():
        path = INVENTORIES / f"{inventory}.inv"
        write_inventory(path, project, names.get(inventory, []))
        paths[inventory] = path
    return paths


# -- 2. pydoctor ------------------------------------------------------------------------------


def _reexport_from_private_modules() -> None:
    """Let pydoctor document a name a public module lists in ``__all__`` and imports from a
    private module where that module defines it (and lists it in its own ``__all__``, as
    txpika's private modules do). pydoctor moves such a name only when the private module
    does not list it; txpika's private modules keep their ``__all__`` for the layering
    checks, so the build treats a private module's ``__all__`` as if it were absent."""
    from pydoctor import astbuilder

    visitor = astbuilder.ModuleVistor
    original = visitor._handleReExport

    def handle(self, exports, origin_name, as_name, origin_module):  # type: ignore[no-untyped-def]
        private = any(p.startswith("_") for p in origin_module.fullName().split("."))
        if not private:
            return original(self, exports, origin_name, as_name, origin_module)
        saved = origin_module.all
        origin_module.all = None
        try:
            return original(self, exports, origin_name, as_name, origin_module)
        finally:
            origin_module.all = saved

    visitor._handleReExport = handle


def pydoctor_args(inventories: dict[str, Path], version: str) -> list[str]:
    args = [
        "--docformat=restructuredtext",
        "--project-name=txpika",
        f"--project-version={version}",
        "--project-url=../index.html",
        f"--project-base-dir={ROOT}",
        f"--html-output={API}",
        "--theme=readthedocs",
        "--privacy=HIDDEN:txpika.spec.*.__init__",
        "--privacy=HIDDEN:txpika.spec_0_8.*.__init__",
        "--quiet",
    ]
    for name, path in inventories.items():
        args.append(f"--intersphinx-file={path}::{EXTERNAL[name][1]}")
    args.append(str(ROOT / "txpika"))
    return args


def run_pydoctor(args: list[str]) -> tuple[list[str], list[str]]:
    """Build the reference; return pydoctor's warnings and the public names that have no
    docstring, each as ``path:line: text``."""
    from pydoctor.driver import get_system, make
    from pydoctor.model import DocumentableKind, PrivacyClass
    from pydoctor.options import Options

    _reexport_from_private_modules()
    if API.exists():
        shutil.rmtree(API)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        system = get_system(Options.from_args(args))
        make(system)
    warnings = [line for line in _join_continuations(out.getvalue()) if _is_warning(line)]

    missing = []
    for ob in system.allobjects.values():
        if ob.privacyClass is not PrivacyClass.PUBLIC or not ob.isVisible:
            continue
        parts = ob.fullName().split(".")
        if any(p.startswith("_") for p in parts):
            continue
        if ob.fullName().startswith(tuple(g + "." for g in GENERATED)):
            continue
        source = ob.source_path if ob.source_path is not None else ob.module.source_path
        if source is not None and Path(source).stem in {g.rsplit(".", 1)[1] for g in GENERATED}:
            continue  # a generated class re-exported elsewhere (txpika.BasicProperties)
        if ob.kind is DocumentableKind.TYPE_VARIABLE:
            continue  # a TypeVar names a type in signatures; it is not API of its own
        if any(d.docstring for d in ob.docsources()) or ob.parsed_docstring is not None:
            continue
        where = ob.source_path if ob.source_path is not None else ob.module.source_path
        kind = ob.kind.name.lower().replace("_", " ") if ob.kind else "name"
        missing.append(f"{where}:{ob.linenumber}: {kind} {ob.fullName()} has no docstring")
    missing.extend(unreferenced_exports(system))
    return warnings, missing


#: The packages whose ``__all__`` is the public surface: each name must have its entry.
SURFACE = ("txpika", "txpika.blocking", "txpika.errors", "txpika.testing", "txpika.aio")


def unreferenced_exports(system: Any) -> list[str]:
    """Names of a `SURFACE` package's ``__all__`` that the reference does not document
    (a module that does not exist yet, txpika.aio before it is written, is skipped)."""
    problems = []
    for package in SURFACE:
        module = system.allobjects.get(package)
        if module is None:
            continue
        for name in module.all or ():
            target = module.expandName(name)
            if target not in system.allobjects:
                where = module.source_path
                problems.append(f"{where}:1: {package}.{name} (in __all__) is not in the reference")
    return problems


def _join_continuations(text: str) -> list[str]:
    """pydoctor prints a multi-line message (a docutils error quoting a table, say) as
    several lines; keep each message on one line, the first."""
    lines: list[str] = []
    for line in text.splitlines():
        if _WARNING.match(line) or not lines:
            lines.append(line)
    return lines


def _is_warning(line: str) -> bool:
    return bool(line.strip()) and "objects' docstrings contain syntax errors" not in line


# -- 4. Sphinx --------------------------------------------------------------------------------


def run_sphinx(inventories: dict[str, Path]) -> list[str]:
    """Build the guides; return Sphinx's warnings."""
    warnfile = BUILD / "sphinx-warnings.txt"
    command = [
        sys.executable,
        "-m",
        "sphinx",
        "-b",
        "html",
        "-n",  # nitpicky: every reference must resolve
        "-q",
        "-E",
        "--keep-going",
        "-w",
        str(warnfile),
        "-d",
        str(BUILD / "doctrees"),
        str(DOCS),
        str(HTML),
    ]
    result = subprocess.run(command, cwd=DOCS, capture_output=True, text=True)
    text = warnfile.read_text() if warnfile.exists() else ""
    warnings = [w for w in text.splitlines() if w.strip()]
    if result.returncode != 0 and not warnings:
        warnings.append(f"sphinx-build exited with {result.returncode}: {result.stderr.strip()}")
    return warnings


# -- report -----------------------------------------------------------------------------------


def by_file(warnings: list[str]) -> str:
    counts: dict[str, list[str]] = collections.defaultdict(list)
    for warning in warnings:
        match = _WARNING.match(warning)
        path = match.group("path") if match else "(no file)"
        with contextlib.suppress(ValueError):
            path = str(Path(path).resolve().relative_to(ROOT))
        counts[path].append(warning)
    lines = []
    for path, items in sorted(counts.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"{len(items):5d}  {path}")
    return "\n".join(lines)


def version() -> str:
    source = (ROOT / "txpika" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', source, re.M)
    if not match:
        raise SystemExit("txpika/__init__.py has no __version__")
    return match.group(1)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--by-file", action="store_true", help="warnings counted per file")
    parser.add_argument("--api-only", action="store_true", help="skip the Sphinx guides")
    options = parser.parse_args(argv)

    started = time.monotonic()
    inventories = build_inventories()
    warnings, missing = run_pydoctor(pydoctor_args(inventories, version()))
    api_done = time.monotonic()
    sphinx_warnings = [] if options.api_only else run_sphinx(inventories)
    everything = warnings + missing + sphinx_warnings

    for line in everything:
        print(line)
    if options.by_file and everything:
        print("\nwarnings per file:")
        print(by_file(everything))
    (BUILD / "warnings.txt").write_text("".join(f"{line}\n" for line in everything))
    print(
        f"\ndocs: {len(warnings)} pydoctor warnings, {len(missing)} public names without a "
        f"docstring, {len(sphinx_warnings)} Sphinx warnings; API {api_done - started:.1f} s, "
        f"total {time.monotonic() - started:.1f} s; output in {HTML.relative_to(ROOT)}/",
        file=sys.stderr,
    )
    return 1 if everything else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
