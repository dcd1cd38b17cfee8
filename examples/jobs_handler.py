"""A handler for the ``twistd txpika`` consumer daemon: JSON jobs, simulated work, failures.

    PYTHONPATH=examples twistd -n --pidfile= txpika --queue jobs \\
        --handler jobs_handler:handle --declare [--on-error requeue|reject]

``twistd txpika`` imports ``handle`` and calls it with each `txpika.Message`. It is a
coroutine; what it returns does not matter, only whether it raises:

- it returns: the daemon acks the message;
- it raises: the daemon rejects the message, requeued with ``--on-error requeue`` (the
  default: the broker delivers it again, with ``message.redelivered`` set) or not with
  ``--on-error reject`` (the broker drops it, or dead-letters it if the queue has a
  dead-letter exchange).

A job is a JSON object, as ``examples/reliable_publisher.py`` publishes them::

    {"id": 7, "work": 0.01}                  sleep 0.01 s, then done
    {"id": 8, "work": 0.01, "fail": "once"}  fail the first delivery, succeed when redelivered
    {"id": 9, "fail": "always"}              a poison message: fails on every delivery

A body that is not a JSON object with an integer ``id`` is poison too. Run a daemon that may
get poison messages with ``--on-error reject``: under ``requeue`` a poison message comes
back forever.

Each outcome is one log line (``job 7 done in 10.2 ms``, ``job 8 failed ...``), which
``examples/demo.py --daemon`` and ``tests/test_examples.py`` read.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.logger import Logger

log = Logger(namespace="jobs_handler")


class PoisonJob(Exception):
    """A message no retry will help with."""


class TransientFailure(Exception):
    """A failure that a later attempt may not have (here: the job says so)."""


def parse(body: bytes) -> dict[str, Any]:
    """The job in ``body``; raises `PoisonJob` if it is not one."""
    try:
        job = json.loads(body)
    except ValueError as exc:
        raise PoisonJob(f"not JSON: {body[:40]!r}") from exc
    if not isinstance(job, dict) or not isinstance(job.get("id"), int):
        raise PoisonJob(f"not a job (no integer id): {body[:40]!r}")
    return job


async def handle(message: Any) -> None:
    """Handle one job; raising makes the daemon reject (or requeue) the message."""
    from twisted.internet import reactor, task  # the reactor twistd chose

    started = time.perf_counter()
    job = parse(message.body)
    redelivered = " (redelivered)" if message.redelivered else ""
    fail = job.get("fail")
    if fail == "always":
        raise PoisonJob(f"job {job['id']} is poison{redelivered}")
    work = float(job.get("work", 0.0))
    if work > 0:
        await task.deferLater(reactor, work)  # pretend to do some work
    if fail == "once" and not message.redelivered:
        raise TransientFailure(f"job {job['id']} failed on its first delivery")
    log.info("job {id} done in {ms:.1f} ms{redelivered}", id=job["id"],
             ms=(time.perf_counter() - started) * 1000, redelivered=redelivered)
