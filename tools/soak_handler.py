"""The message handler of the ``twistd txpika`` daemon that tools/soak.py's memory mode runs.

Each body is a message number below ``SOAK_EXPECTED`` (environment); ``handle`` counts how
often each number arrived in a byte array allocated at import, so the daemon's memory does
not grow with what it handles. Every 1000 messages, and at shutdown, it writes
``<count> <distinct>`` to ``SOAK_STATUS`` (atomically); at shutdown it also writes the
counts to ``SOAK_STATUS.seen`` for the soak to find lost and duplicated numbers.
"""

from __future__ import annotations

import os
from typing import Any

_EXPECTED = int(os.environ.get("SOAK_EXPECTED", "0") or 0)
_STATUS = os.environ.get("SOAK_STATUS", "")
_seen = bytearray(_EXPECTED)
_count = 0
_distinct = 0
_foreign = 0


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _status() -> None:
    if _STATUS:
        _write(_STATUS, f"{_count} {_distinct} {_foreign}\n".encode())


def _final() -> None:
    _status()
    if _STATUS:
        _write(f"{_STATUS}.seen", bytes(_seen))


def handle(message: Any) -> None:
    global _count, _distinct, _foreign
    if _count == 0:
        _install()
    _count += 1
    try:
        number = int(message.body)
    except ValueError:
        number = -1
    if 0 <= number < _EXPECTED:
        if _seen[number] == 0:
            _distinct += 1
        if _seen[number] < 255:
            _seen[number] += 1
    else:
        _foreign += 1
    if _count % 1000 == 0:
        _status()


def _install() -> None:
    # At the first message, not at import: twistd imports the handler before it runs.
    from twisted.internet import reactor

    reactor.addSystemEventTrigger("after", "shutdown", _final)
