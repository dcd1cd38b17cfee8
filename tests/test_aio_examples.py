"""examples/aio_async_await.py, the three-styles task on asyncio, run as a user would.

It runs as a subprocess against the broker (on the default loop and on uvloop) and must
print what the Twisted versions print (tests/test_examples.py::test_three_styles); without
a broker it fails cleanly; it never imports Twisted.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "aio_async_await.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, str(EXAMPLE), *args], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=60, check=False)


@pytest.mark.broker
@pytest.mark.parametrize("args", [[], ["--uvloop"]], ids=["asyncio", "uvloop"])
@pytest.mark.parametrize("url_style", ["positional", "option"])
def test_aio_three_styles_task(broker_url: str, args: list[str], url_style: str) -> None:
    url = [broker_url] if url_style == "positional" else ["--url", broker_url]
    result = _run(*url, *args)
    out = result.stdout
    assert result.returncode == 0, out
    assert re.search(r"^declared queue amq\.gen-\S+$", out, re.M), out
    assert "published 10 messages" in out, out
    bodies = ", ".join(f"message {i}" for i in range(10))
    assert f"received and acked 10 messages: {bodies}" in out, out
    assert out.rstrip().endswith("closed"), out


def test_aio_example_fails_cleanly_without_a_broker() -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _run(f"amqp://guest:guest@127.0.0.1:{port}/%2F")
    assert result.returncode == 1, result.stdout
    assert "failed: ConnectionRefusedError" in result.stdout, result.stdout
    assert "Traceback" not in result.stdout, result.stdout


def test_aio_example_help_and_no_twisted() -> None:
    probe = (
        "import runpy, sys; sys.argv = [sys.argv[1], '--help']\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope'))\n"
        "print('FORBIDDEN', bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(EXAMPLE)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                            text=True, timeout=60, check=False)
    assert "FORBIDDEN []" in result.stdout, (result.stdout, result.stderr)
    assert result.stdout.startswith("usage: "), result.stdout
    assert "amqp://guest:guest@localhost:5672/%2F" in result.stdout, result.stdout
