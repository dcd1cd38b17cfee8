"""The code in the README and the guides runs, so the documentation cannot rot.

Every ``.. code-block:: python`` of README.rst and docs/guides/*.rst (the guides this test
owns; pages other work adds carry their own tests) is either in a section another test runs
(the README's quick start and the sections listed in `SECTIONS_RUN_ELSEWHERE`) or follows an
RST comment that says how to run it:

``.. test: memory``
    the block is the body of a coroutine run against `txpika.testing.MemoryBroker`, with
    ``connection``, ``channel`` (an open channel on it), ``broker`` and ``txpika`` in scope
    and the queue ``jobs`` holding
    ``b"job 0"`` to ``b"job 2"``;
``.. test: broker-script`` / ``.. test: pika-script``
    a whole program, run against the broker (its URL substituted; the queue ``jobs``
    renamed so runs never collide, and deleted afterwards); it must exit 0 and print
    ``b'hello'``;
``.. test: aio-script``
    the same, for a program of the asyncio adapter (once ``txpika.aio`` exists).

docs/external.txt, the external names the docs link to, is checked too: each name must
exist in the installed Twisted or standard library with the role it claims.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDES = ROOT / "docs" / "guides"
#: Pages written by other work (the asyncio adapter, operating daemons): not checked here.
OTHERS = {"asyncio.rst", "writing-an-adapter.rst", "operating.rst"}
#: (page, section) whose code blocks tests/test_examples.py and
#: tests/test_testing_examples.py run or compare with the files they run.
SECTIONS_RUN_ELSEWHERE = {
    ("README.rst", "Quick start"),
    ("reconnecting.rst", "Reconnecting service"),
    ("blocking.rst", "Scripts: txpika.blocking"),
    ("testing.rst", "Testing your code"),
}
KINDS = {"memory", "broker-script", "pika-script", "aio-script"}
URLS = ("amqp://guest:guest@localhost:5672/%2F", "amqp://guest:guest@localhost/%2F")


def pages() -> list[Path]:
    return [ROOT / "README.rst", *sorted(p for p in GUIDES.glob("*.rst") if p.name not in OTHERS)]


def code_blocks(page: Path) -> list[tuple[str, str, str | None, int]]:
    """(section, code, test kind or None, line) of each Python code block of ``page``."""
    lines = page.read_text().splitlines()
    blocks = []
    section = ""
    kind: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        underline = lines[i + 1] if i + 1 < len(lines) else ""
        if (line.strip() and re.fullmatch(r"[=\-~]{3,}", underline)
                and len(underline) >= len(line.rstrip())):
            section = line.strip()
        marker = re.fullmatch(r"\.\. test: (\S+)", line.strip())
        if marker:
            kind = marker.group(1)
        if line.strip() == ".. code-block:: python":
            start = i + 1
            body = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("    ")):
                body.append(lines[i])
                i += 1
            blocks.append((section, textwrap.dedent("\n".join(body)).strip() + "\n", kind, start))
            kind = None
            continue
        i += 1
    return blocks


ALL_BLOCKS = [(page, *block) for page in pages() for block in code_blocks(page)]


def block_id(item: tuple[Path, str, str, str | None, int]) -> str:
    return f"{item[0].name}:{item[4]}"


def test_every_python_block_is_run() -> None:
    assert ALL_BLOCKS
    unrun = [
        block_id(item)
        for item in ALL_BLOCKS
        if item[3] is None and (item[0].name, item[1]) not in SECTIONS_RUN_ELSEWHERE
    ]
    assert not unrun, f"code blocks no test runs (add a '.. test: KIND' comment): {unrun}"
    unknown = [block_id(item) for item in ALL_BLOCKS if item[3] and item[3] not in KINDS]
    assert not unknown, unknown


# -- memory -----------------------------------------------------------------------------------


MEMORY = [item for item in ALL_BLOCKS if item[3] == "memory"]


@pytest.mark.parametrize("item", MEMORY, ids=block_id)
def test_memory_block(item: tuple[Path, str, str, str | None, int]) -> None:
    from txpika.testing import MemoryBroker

    broker = MemoryBroker()
    broker.declare_queue("jobs")
    for n in range(3):
        broker.publish("", "jobs", b"job %d" % n)
    connection = broker.result(broker.connect())
    channel = broker.result(connection.channel())
    source = ("async def _block(connection, channel, broker):\n"
              + textwrap.indent(item[2], "    "))
    import txpika

    namespace: dict[str, Any] = {"txpika": txpika}
    exec(compile(source, f"{item[0].name}:{item[4]}", "exec"), namespace)
    broker.result(namespace["_block"](connection, channel, broker))
    assert broker.queue("jobs").unacked == ()


# -- scripts against the broker ---------------------------------------------------------------


SCRIPTS = [item for item in ALL_BLOCKS if item[3] in ("broker-script", "pika-script", "aio-script")]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXPIKA_TEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.mark.broker
@pytest.mark.parametrize("item", SCRIPTS, ids=block_id)
def test_script_block(item: tuple[Path, str, str, str | None, int], broker_url: str,
                      tmp_path: Path) -> None:
    if item[3] == "aio-script":
        pytest.importorskip("txpika.aio", reason="txpika.aio is not written yet (issue 12)")
    code = item[2]
    assert any(url in code for url in URLS), "the example names no broker URL"
    for url in URLS:
        code = code.replace(url, broker_url)
    queue = f"txpika-docs-{uuid.uuid4().hex[:8]}"
    code = code.replace('"jobs"', repr(queue))
    script = tmp_path / "example.py"
    script.write_text(code)
    try:
        result = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=_env(), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=30, check=False)
    finally:
        from txpika import blocking

        with blocking.connect(broker_url) as conn:
            conn.channel().queue_delete(queue)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["b'hello'"], result.stdout + result.stderr


# -- docs/external.txt ------------------------------------------------------------------------


def external_names() -> list[tuple[str, str, str]]:
    entries = []
    for raw in (ROOT / "docs" / "external.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            inventory, role, name = line.split()[:3]
            entries.append((inventory, role, name))
    return entries


def _resolve(name: str) -> Any:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            value = getattr(value, attr)
        return value
    import builtins

    return getattr(builtins, name)


@pytest.mark.parametrize("entry", external_names(), ids=lambda e: e[2])
def test_external_name_exists_with_its_role(entry: tuple[str, str, str]) -> None:
    _inventory, role, name = entry
    value = _resolve(name)
    if role == "module":
        assert inspect.ismodule(value)
    elif role == "class":
        assert inspect.isclass(value)
    elif role == "interface":
        from zope.interface.interface import InterfaceClass

        assert isinstance(value, InterfaceClass)
    elif role == "exception":
        assert inspect.isclass(value) and issubclass(value, BaseException)
    elif role in ("function", "method"):
        assert callable(value)
    else:
        assert role in ("attribute", "data"), role
