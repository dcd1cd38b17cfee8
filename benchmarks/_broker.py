"""The parent side that throughput.py, daemon.py and blocking.py share: broker administration with
pika's BlockingConnection (declare, pre-fill, count, delete), and running a child process
that reports one ``RESULT {json}`` line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from _harness import HERE


class Admin:
    """Queues of the benchmark, outside any measurement."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def _connect(self) -> Any:
        import pika

        a = self.args
        return pika.BlockingConnection(pika.ConnectionParameters(
            host=a.host, port=a.port, virtual_host=a.vhost, heartbeat=0,
            credentials=pika.PlainCredentials(a.user, a.password), blocked_connection_timeout=30))

    def declare(self, queue: str) -> None:
        conn = self._connect()
        try:
            conn.channel().queue_declare(queue, durable=False, auto_delete=False)
        finally:
            conn.close()

    def count(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers) of ``queue``."""
        conn = self._connect()
        try:
            ok = conn.channel().queue_declare(queue, passive=True).method
            return ok.message_count, ok.consumer_count
        finally:
            conn.close()

    def delete(self, queue: str) -> None:
        with contextlib.suppress(Exception):
            conn = self._connect()
            try:
                conn.channel().queue_delete(queue)
            finally:
                conn.close()

    def prefill(self, queue: str, count: int, size: int) -> None:
        sys.path.insert(0, str(HERE))
        from peers._common import BigBodies, small_body

        make = BigBodies(size).make if size > 1 << 20 else (lambda i: small_body(i, size))
        conn = self._connect()
        try:
            ch = conn.channel()
            for i in range(count):
                ch.basic_publish("", queue, make(i))
        finally:
            conn.close()

    def wait_count(self, queue: str, want: int, limit: float) -> int:
        """Poll until ``queue`` holds ``want`` messages and has no consumer (or ``limit``
        seconds pass); the count it holds."""
        deadline = time.monotonic() + limit
        while True:
            have, consumers = self.count(queue)
            if (have == want and consumers == 0) or time.monotonic() > deadline:
                return have
            time.sleep(0.2)

    def prefill_checked(self, queue: str, count: int, size: int) -> None:
        self.prefill(queue, count, size)
        have = self.wait_count(queue, count, 30)
        if have != count:
            raise RuntimeError(f"pre-fill: the queue holds {have} of {count}")


def run_command(cmd: list[str], timeout: float, env: dict[str, str] | None = None,
                cwd: str | None = None) -> dict[str, Any]:
    """Run one child; its last ``RESULT`` line as a dict, or {"status": "TIMEOUT"/"ERROR",
    ...} with the tail of its stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True, env=env,
                                cwd=cwd)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"status": "TIMEOUT", "note": f"killed after {timeout:g} s"}
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            if result.get("error"):
                result["stderr_tail"] = stderr.strip().splitlines()[-12:]
            return result
    return {"status": "ERROR", "note": f"exit {proc.returncode}",
            "stderr_tail": stderr.strip().splitlines()[-12:]}


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                 grace: float = 5.0) -> None:
    """Send ``sig`` to the child's process group; SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
