"""Every public name is what it claims to be (in the spirit of klein's test_exports).

``txpika.__all__`` lists the public API; the Twisted-facing names are imported on first use
(``txpika._LAZY`` names the module each comes from). Each name must resolve, be the very
object its home module defines under that name, and carry a docstring; the same for
``txpika.blocking`` and ``txpika.errors``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import txpika
import txpika.aio
import txpika.blocking
import txpika.errors

ROOT = Path(__file__).resolve().parent.parent


def _home(obj: object) -> str | None:
    return getattr(obj, "__module__", None)


@pytest.mark.parametrize("name", txpika.__all__)
def test_every_name_in_txpika_all_resolves_to_its_home_object(name: str) -> None:
    obj = getattr(txpika, name)
    assert obj is not None
    lazy = txpika._LAZY.get(name)
    if lazy is not None:
        assert getattr(importlib.import_module(lazy), name) is obj
    home = _home(obj)
    if inspect.isclass(obj) or inspect.isfunction(obj):
        assert home is not None and home.split(".")[0] == "txpika", (name, home)
        # Defined where it is found: its home module has it under the same name.
        assert getattr(importlib.import_module(home), obj.__name__) is obj
        assert obj.__name__ == name
        assert inspect.getdoc(obj), f"txpika.{name} has no docstring"


def test_txpika_all_is_complete_and_lazy_names_are_listed() -> None:
    assert sorted(txpika.__all__) == sorted(set(txpika.__all__)), "duplicates in __all__"
    assert set(txpika._LAZY) <= set(txpika.__all__)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        txpika.NoSuchName  # noqa: B018


@pytest.mark.parametrize("module", [txpika.blocking, txpika.errors, txpika.aio],
                         ids=lambda m: m.__name__)
def test_submodule_exports(module: ModuleType) -> None:
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__name__ == name
            assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"
            home = importlib.import_module(obj.__module__)
            assert getattr(home, name) is obj


def test_every_error_is_exported_from_the_package() -> None:
    errors = [name for name in txpika.errors.__all__
              if inspect.isclass(getattr(txpika.errors, name))]
    for name in ("ConnectionLost", "ConnectionClosed", "ChannelClosed", "AMQPError",
                 "OutcomeUnknownError", "NackError", "UnroutableError"):
        assert name in errors
        assert getattr(txpika, name) is getattr(txpika.errors, name)


_FRESH = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import txpika
eager = sorted(m for m in sys.modules if m.split(".")[0] in ("twisted", "zope"))
names = {name: type(getattr(txpika, name)).__name__ for name in txpika.__all__}
print(json.dumps({"eager": eager, "names": names}))
"""


def test_a_fresh_interpreter_resolves_every_name() -> None:
    """``import txpika`` imports no Twisted; reaching each name loads what it needs."""
    proc = subprocess.run([sys.executable, "-c", _FRESH, str(ROOT)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["eager"] == []
    assert set(result["names"]) == set(txpika.__all__)


@pytest.mark.parametrize("name", ["txpika.observe", "txpika.metrics", "txpika.tracing"])
def test_observability_module_exports(name: str) -> None:
    """The observer interface, the Prometheus observer and tracing (issue 13): each public
    name is defined there and documented; importing them loads no Twisted."""
    module = importlib.import_module(name)
    for export in module.__all__:
        obj = getattr(module, export)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ == name and obj.__name__ == export
            assert inspect.getdoc(obj), f"{name}.{export} has no docstring"
    probe = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import {name}; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope')))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
