"""The codec and the sans-IO core import nothing from Twisted or zope (DESIGN.md, section 1).

Two checks per module:

- at run time: a fresh interpreter imports the module and nothing in ``sys.modules`` may be
  ``twisted``/``zope`` or below them;
- statically: no import statement in the module, or in any txpika module it imports (followed
  transitively), names ``twisted`` or ``zope`` -- not even under ``if TYPE_CHECKING:``.

The run-time check is done twice: once with the modules loaded on their own (a bare
``txpika`` package object, so ``txpika/__init__.py`` is not run) to blame the module itself,
and once through the real package, which is what the blocking adapter does.

The blocking adapter (DESIGN.md section 8) gets the same checks: ``txpika.blocking`` and the
modules it shares with the Twisted layer (``txpika.parameters``, ``txpika.auth``) import no
Twisted or zope, statically or at run time, and neither does opening a connection with it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "txpika"

CORE_MODULES = [
    "txpika._wire",
    "txpika.errors",
    "txpika.spec",
    "txpika.spec_0_8",
    "txpika.frames",
    "txpika.connection",
]
#: The blocking adapter and the Twisted-free modules it shares with the Twisted layer.
BLOCKING_MODULES = [
    "txpika.blocking",
    "txpika.parameters",
    "txpika.auth",
]
FORBIDDEN = ("twisted", "zope")


def _is_forbidden(name: str) -> bool:
    return name.split(".", 1)[0] in FORBIDDEN


def _module_file(module: str) -> Path:
    parts = module.split(".")
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{module} not found (looked for {base}.py and {base}/__init__.py)")


_PROBE = r"""
import importlib, json, sys, types

modules = json.loads(sys.argv[1])
isolated = sys.argv[2] == "isolated"
root = sys.argv[3]
sys.path.insert(0, root)
if isolated:
    # A bare package object: submodules load from txpika/ without running __init__.py.
    pkg = types.ModuleType("txpika")
    pkg.__path__ = [root + "/txpika"]
    sys.modules["txpika"] = pkg
result = {}
for name in modules:
    before = set(sys.modules)
    importlib.import_module(name)
    result[name] = sorted(
        m for m in set(sys.modules) - before if m.split(".", 1)[0] in ("twisted", "zope")
    )
result["*"] = sorted(m for m in sys.modules if m.split(".", 1)[0] in ("twisted", "zope"))
print(json.dumps(result))
"""


def _imported_forbidden(modules: list[str], mode: str) -> dict[str, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(modules), mode, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(ROOT),
        check=False,
    )
    assert proc.returncode == 0, f"importing {modules} failed:\n{proc.stderr}"
    result: dict[str, list[str]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_exists(module: str) -> None:
    _module_file(module)


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_no_twisted_or_zope(module: str) -> None:
    _module_file(module)
    result = _imported_forbidden([module], "isolated")
    assert result["*"] == [], (
        f"importing {module} (without txpika/__init__.py) loaded {result['*']}; "
        "the codec and the sans-IO core must not depend on Twisted or zope"
    )


def test_core_modules_via_package_import_no_twisted_or_zope() -> None:
    for module in CORE_MODULES:
        _module_file(module)
    result = _imported_forbidden(CORE_MODULES, "package")
    assert result["*"] == [], (
        f"`import txpika.<core>` loaded {result['*']} (per module: "
        f"{ {k: v for k, v in result.items() if k != '*' and v} }). If the modules pass on "
        "their own, txpika/__init__.py imports the Twisted layer eagerly: the blocking adapter "
        "(DESIGN.md section 8) needs `import txpika` to stay Twisted-free, so import the "
        "Twisted-facing names lazily (a module-level __getattr__)."
    )


def _static_imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module name) for each import statement in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts)
                target = f"{base}.{node.module}" if node.module else base
                if not node.module:
                    # `from . import x`: x may be a submodule.
                    found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
                    continue
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from txpika import frames` may name a submodule.
            if target == "txpika" or target.startswith("txpika."):
                found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names)
    return found


def _forbidden_import_statements(module: str) -> list[str]:
    """``path:line: import of X`` for each Twisted/zope import statement in ``module`` or in
    any txpika module it imports, followed transitively (function-level imports included)."""
    _module_file(module)
    seen: set[str] = set()
    todo = [module]
    offenders: list[str] = []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            path = _module_file(name)
        except FileNotFoundError:
            continue  # a name imported from a module, not a module itself
        for lineno, imported in _static_imports(path, name):
            if _is_forbidden(imported):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: import of {imported}")
            elif imported.startswith("txpika.") and imported not in seen:
                todo.append(imported)
    return offenders


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_has_no_twisted_or_zope_import_statement(module: str) -> None:
    offenders = _forbidden_import_statements(module)
    assert not offenders, (
        f"{module} (or a txpika module it imports) imports Twisted/zope:\n" + "\n".join(offenders)
    )


# -- the blocking adapter -------------------------------------------------------------------------


@pytest.mark.parametrize("module", BLOCKING_MODULES)
def test_blocking_module_has_no_twisted_or_zope_import_statement(module: str) -> None:
    offenders = _forbidden_import_statements(module)
    assert not offenders, (
        f"{module} (or a txpika module it imports) imports Twisted/zope:\n" + "\n".join(offenders)
        + "\nThe blocking adapter must work without Twisted (DESIGN.md section 8)."
    )


@pytest.mark.parametrize("mode", ["isolated", "package"])
def test_blocking_modules_import_no_twisted_or_zope(mode: str) -> None:
    result = _imported_forbidden(BLOCKING_MODULES, mode)
    assert result["*"] == [], (
        f"importing {BLOCKING_MODULES} ({mode}) loaded {result['*']} (per module: "
        f"{ {k: v for k, v in result.items() if k != '*' and v} })"
    )


_BLOCKING_USE_PROBE = r"""
import json, socket, sys
sys.path.insert(0, sys.argv[1])
import txpika.blocking as blocking
from txpika import BasicProperties, ConnectionParameters, errors, parse_url

with socket.socket() as probe:  # a port nothing listens on
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
outcomes = []
for protocol in ("0-9-1", "0-8"):
    url = f"amqp://guest:guest@127.0.0.1:{port}/%2F?protocol={protocol}&heartbeat=5"
    try:
        blocking.connect(url, connection_timeout=5)
    except OSError as exc:
        outcomes.append(type(exc).__name__)
try:
    blocking.connect("tcp:host=127.0.0.1:port=5672")
except errors.UsageError as exc:
    outcomes.append(type(exc).__name__)
BasicProperties(delivery_mode=2)
ConnectionParameters(port=port)
parse_url("amqps://u:p@example.invalid/v?verify=false")
print(json.dumps({
    "outcomes": outcomes,
    "forbidden": sorted(m for m in sys.modules if m.split(".", 1)[0] in ("twisted", "zope")),
}))
"""


def test_using_the_blocking_adapter_imports_no_twisted_or_zope() -> None:
    """A fresh interpreter imports ``txpika.blocking`` through the real package and tries to
    connect (0-9-1 and 0-8, which loads its spec lazily) to a closed port."""
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKING_USE_PROBE, str(ROOT)],
        capture_output=True, text=True, timeout=60, cwd=str(ROOT), check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["outcomes"] == ["ConnectionRefusedError", "ConnectionRefusedError",
                                  "InvalidParameter"]
    assert result["forbidden"] == [], (
        f"using txpika.blocking loaded {result['forbidden']}: the blocking adapter must not "
        "import Twisted or zope (DESIGN.md section 8)"
    )
