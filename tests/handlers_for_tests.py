"""Message handlers for the ``twistd txpika`` runs of tests/test_twistd.py (not a test module).

``handle`` appends each message's ``message_id`` (one per line) to the file named by the
environment variable ``TXPIKA_TEST_HANDLED``; with ``TXPIKA_TEST_HANDLER_DELAY`` (seconds)
it first waits that long, so that a shutdown finds handlers running.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred

#: Not a handler: ``--handler handlers_for_tests:NOT_CALLABLE`` must be refused.
NOT_CALLABLE = "a handler must be callable"


def _record(message: Any) -> None:
    path = os.environ["TXPIKA_TEST_HANDLED"]
    message_id = message.properties.message_id or message.body.decode()
    with open(path, "a", encoding="ascii") as f:
        f.write(message_id + "\n")


def handle(message: Any) -> Deferred[None] | None:
    delay = float(os.environ.get("TXPIKA_TEST_HANDLER_DELAY", "0") or 0)
    if delay <= 0:
        _record(message)
        return None
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    return deferLater(reactor, delay, _record, message)
