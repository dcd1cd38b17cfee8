"""txpika.testing sits above the adapters, and nothing in txpika depends on it.

- The broker's sans-IO side (every txpika.testing module but _broker and _memory) imports
  nothing from Twisted or zope, at run time (a fresh interpreter) or statically;
  ``from txpika.testing import BrokerCore, ServerConnection`` loads no Twisted either.
- txpika.testing imports only the codec, txpika.errors, txpika.parameters, the public
  txpika.protocol.AMQPProtocol and Twisted: never txpika.connection, txpika.channel,
  txpika.client, txpika.robust or the other internals of the adapters.
- No module of txpika outside txpika/testing/ imports txpika.testing.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "txpika"
TESTING = PACKAGE / "testing"
SANS_IO = ["_model", "_queue", "_vhost", "_channel", "_server", "_core"]
#: "txpika" itself for its __version__ (txpika/__init__.py imports no Twisted).
ALLOWED = {"txpika", "txpika._wire", "txpika._specbase", "txpika.errors", "txpika.frames",
           "txpika.spec", "txpika.parameters", "txpika.protocol"}


def imports(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names (TYPE_CHECKING ones too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == "txpika":  # from txpika import errors, spec: submodules
                names.update(f"txpika.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return names


@pytest.mark.parametrize("module", SANS_IO)
def test_sans_io_modules_import_no_twisted_statically(module: str) -> None:
    bad = {n for n in imports(TESTING / f"{module}.py") if n.split(".")[0] in ("twisted",
                                                                           "zope")}
    assert not bad, f"txpika.testing.{module} imports {sorted(bad)}"


def test_sans_io_side_loads_no_twisted() -> None:
    probe = ("import sys\n"
             "from txpika.testing import BrokerCore, ServerConnection, BrokerMessage\n"
             "import txpika.testing._server, txpika.testing._core\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_testing_imports_only_what_it_may() -> None:
    for path in sorted(TESTING.glob("*.py")):
        mine = {n for n in imports(path) if n.split(".")[0] == "txpika"
                and not n.startswith("txpika.testing")}
        bad = sorted(mine - ALLOWED)
        assert not bad, f"{path.name} imports {bad}"


def test_nothing_in_txpika_imports_testing() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        bad = {n for n in imports(path) if n.startswith("txpika.testing")}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_every_exported_name_is_documented() -> None:
    import txpika.testing as kit

    for name in kit.__all__:
        obj = getattr(kit, name)
        assert obj.__doc__ and obj.__doc__.strip(), name
        for attr, value in vars(obj).items():
            if not attr.startswith("_") and callable(value) and not isinstance(value, type):
                assert value.__doc__, f"{name}.{attr} has no docstring"
