"""The handler of the ``twistd txpika --health`` runs in tests/test_health.py (not a test
module). A message's body says what to do: ``ok`` returns at once; ``fail`` raises on its
first delivery (so ``--on-error requeue`` requeues it and the redelivery is acked, while
``--on-error reject`` rejects it); ``slow:SECONDS`` finishes after that long.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred


def handle(message: Any) -> Deferred[None] | None:
    kind, _, argument = message.body.decode().partition(":")
    if kind == "fail" and not message.redelivered:
        raise ValueError("this message asks to fail")
    if kind == "slow":
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        return deferLater(reactor, float(argument), lambda: None)
    return None
