"""The layers of txpika: imports point one way, and the lower ones import no Twisted or zope.

The allowed-edges table (`LAYER_OF`, `MAY_IMPORT`, at the end) places every module in a layer
and says which layers each may import from; `TYPE_CHECKING` and function-level imports
count, and no two modules may import each other, directly or around a circle.

The codec, the sans-IO core and the channel layer import nothing from Twisted or zope
(DESIGN.md, section 1).

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
    "txpika._wire_encode",
    "txpika.errors",
    "txpika.spec",
    "txpika.spec_0_8",
    "txpika.frames",
    "txpika.connection",
    # the rest of the core, and the channel layer every adapter shares
    "txpika._states",
    "txpika._core_channel",
    "txpika._core_requests",
    "txpika._content",
    "txpika._confirms",
    "txpika._handshake",
    "txpika._requests",
    "txpika._delivery",
    "txpika._chanbook",
    "txpika._session",
    "txpika._outbox",
    # observers (metrics, tracing): no Twisted either
    "txpika.observe",
    "txpika.metrics",
    "txpika.tracing",
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


# -- the one-way house: an allowed-edges table ------------------------------------------------

#: Every txpika module and its layer. A new module must be placed here.
LAYER_OF: dict[str, str] = {
    # codec: wire types, the generated spec, frames, errors
    "txpika.errors": "codec",
    "txpika._tags": "codec",
    "txpika._wire": "codec",
    "txpika._wire_encode": "codec",
    "txpika._specbase": "codec",
    "txpika.spec": "codec",
    "txpika.spec_0_8": "codec",
    "txpika.frames": "codec",
    "txpika.observe": "codec",  # the observer interface: imports only txpika.errors
    # the sans-IO core (and the Twisted-free parameters every adapter takes)
    "txpika.auth": "core",
    "txpika.events": "core",
    "txpika._states": "core",
    "txpika._confirms": "core",
    "txpika._content": "core",
    "txpika._handshake": "core",
    "txpika._core_channel": "core",
    "txpika._core_requests": "core",
    "txpika.connection": "core",
    "txpika.parameters": "core",
    "txpika.metrics": "core",  # Prometheus (optional extra), an observer
    "txpika.tracing": "core",  # OpenTelemetry (optional extra)
    # the channel layer, written once for every adapter
    "txpika._requests": "channels",
    "txpika._delivery": "channels",
    "txpika._chanbook": "channels",
    "txpika._session": "channels",
    "txpika._outbox": "channels",
    # adapters: Twisted, and blocking (siblings: neither imports the other)
    "txpika._transport": "twisted",
    "txpika._tls": "twisted",
    "txpika.message": "twisted",
    "txpika._consumer": "twisted",
    "txpika.channel": "twisted",
    "txpika.protocol": "twisted",
    "txpika._connect": "twisted",
    "txpika.blocking": "blocking",
    "txpika.blocking._io": "blocking",
    "txpika.blocking._log": "blocking",
    "txpika.blocking._connection": "blocking",
    "txpika.blocking._api": "blocking",
    "txpika.blocking._publishing": "blocking",
    # the asyncio adapter (a sibling of the Twisted and blocking ones)
    "txpika.aio": "aio",
    "txpika.aio._log": "aio",
    "txpika.aio._consumer": "aio",
    "txpika.aio._channel": "aio",
    "txpika.aio._connection": "aio",
    # recovery and the consumer service
    "txpika._topology": "service",
    "txpika._robust_consumer": "service",
    "txpika.robust": "service",
    "txpika.publisher": "service",
    "txpika.client": "service",
    "txpika.consumer": "service",
    # twistd
    "txpika.tap": "daemon",
    "txpika._health": "daemon",
    # the package itself: the public names, re-exported (Twisted's lazily)
    "txpika": "package",
}

#: Layer -> the layers its modules may import from (besides its own).
MAY_IMPORT: dict[str, set[str]] = {
    "codec": set(),
    "core": {"codec"},
    "channels": {"codec", "core"},
    "twisted": {"codec", "core", "channels"},
    "blocking": {"codec", "core", "channels"},
    "aio": {"codec", "core", "channels"},
    "service": {"codec", "core", "channels", "twisted"},
    "daemon": {"codec", "core", "channels", "twisted", "service"},
    "package": {"codec", "core", "channels", "twisted", "service"},
}


def _txpika_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def _edges() -> dict[str, set[str]]:
    """module -> the txpika modules it imports (TYPE_CHECKING and function-level
    imports included)."""
    known = set(_txpika_modules())
    edges: dict[str, set[str]] = {}
    for module in known:
        by_line: dict[int, list[str]] = {}
        for line, imported in _static_imports(_module_file(module), module):
            by_line.setdefault(line, []).append(imported)
        targets: set[str] = set()
        for names in by_line.values():
            for imported in names:
                if imported == "txpika" and all(
                        n in known for n in names if n.startswith("txpika.")) and len(names) > 1:
                    continue  # `from txpika import spec`: the submodule, not the package
                if imported in known and imported != module:
                    targets.add(imported)
        edges[module] = targets
    return edges


# txpika.testing (the in-memory broker for users' tests) stands above the adapters: its
# server side is sans-IO, its MemoryBroker drives the Twisted adapter.
LAYER_OF.update({m: "testing" for m in _txpika_modules() if m.startswith("txpika.testing")})
MAY_IMPORT["testing"] = {"codec", "core", "channels", "twisted", "package"}


def test_every_module_has_a_layer() -> None:
    missing = [m for m in _txpika_modules() if m not in LAYER_OF]
    assert not missing, f"place these modules in LAYER_OF: {missing}"
    gone = [m for m in LAYER_OF if m not in _txpika_modules()]
    assert not gone, f"LAYER_OF names modules that do not exist: {gone}"


def _back_edges(edges: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(edges.items()):
        layer = LAYER_OF[module]
        for target in sorted(targets):
            target_layer = LAYER_OF[target]
            if target_layer != layer and target_layer not in MAY_IMPORT[layer]:
                found.append(f"{module} ({layer}) imports {target} ({target_layer})")
    return found


def test_imports_point_down_only() -> None:
    back_edges = _back_edges(_edges())
    assert not back_edges, "imports against the layering:\n" + "\n".join(back_edges)


def test_no_import_cycles() -> None:
    edges = _edges()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target):], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state and module != "txpika":
            visit(module)
    # (the package's __init__ names everything; modules import it only to reach a
    # submodule, which _static_imports records as the submodule itself)
    cycles = [c for c in cycles if "txpika" not in c]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checks_catch_a_back_edge(tmp_path: Path) -> None:
    """The layering check itself works: a core module importing the Twisted channel, even
    under TYPE_CHECKING, is found."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from txpika.channel import Channel\n"
    )
    path = tmp_path / "probe.py"
    path.write_text(source, encoding="utf-8")
    imported = [name for _, name in _static_imports(path, "txpika._probe")]
    assert "txpika.channel" in imported
    edges = _edges()
    edges["txpika.connection"] = {*edges["txpika.connection"], "txpika.channel"}
    edges["txpika.blocking._api"] = {*edges["txpika.blocking._api"], "txpika.protocol"}
    assert _back_edges(edges) == [
        "txpika.blocking._api (blocking) imports txpika.protocol (twisted)",
        "txpika.connection (core) imports txpika.channel (twisted)",
    ]


# -- the asyncio adapter --------------------------------------------------------------------------

#: The asyncio adapter and the Twisted-free modules it shares with the Twisted layer.
AIO_MODULES = ["txpika.aio", "txpika.parameters", "txpika.auth"]


@pytest.mark.parametrize("module", AIO_MODULES)
def test_aio_module_has_no_twisted_or_zope_import_statement(module: str) -> None:
    offenders = _forbidden_import_statements(module)
    assert not offenders, (
        f"{module} (or a txpika module it imports) imports Twisted/zope:\n" + "\n".join(offenders)
        + "\nThe asyncio adapter must work without Twisted (DESIGN.md section 9).")


@pytest.mark.parametrize("mode", ["isolated", "package"])
def test_aio_modules_import_no_twisted_or_zope(mode: str) -> None:
    result = _imported_forbidden(AIO_MODULES, mode)
    assert result["*"] == [], f"importing {AIO_MODULES} ({mode}) loaded {result['*']}"


_AIO_USE_PROBE = r"""
import asyncio, json, socket, sys
sys.path.insert(0, sys.argv[1])
from txpika import aio, errors

with socket.socket() as probe:  # a port nothing listens on
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]

async def main():
    outcomes = []
    for protocol in ("0-9-1", "0-8"):
        url = f"amqp://guest:guest@127.0.0.1:{port}/%2F?protocol={protocol}&heartbeat=5"
        try:
            await aio.connect(url, connection_timeout=5)
        except OSError as exc:
            outcomes.append(type(exc).__name__)
    try:
        await aio.connect("tcp:host=127.0.0.1:port=5672")
    except errors.UsageError as exc:
        outcomes.append(type(exc).__name__)
    return outcomes

outcomes = asyncio.run(main())
print(json.dumps({
    "outcomes": outcomes,
    "forbidden": sorted(m for m in sys.modules if m.split(".", 1)[0] in ("twisted", "zope")),
}))
"""


def test_using_the_aio_adapter_imports_no_twisted_or_zope() -> None:
    """A fresh interpreter imports ``txpika.aio`` through the real package, runs a loop and
    tries to connect (0-9-1 and 0-8) to a closed port: no Twisted or zope in sys.modules."""
    proc = subprocess.run(
        [sys.executable, "-c", _AIO_USE_PROBE, str(ROOT)],
        capture_output=True, text=True, timeout=60, cwd=str(ROOT), check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["outcomes"] == ["ConnectionRefusedError", "ConnectionRefusedError",
                                  "InvalidParameter"]
    assert result["forbidden"] == [], f"using txpika.aio loaded {result['forbidden']}"
