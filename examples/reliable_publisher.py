"""Publish jobs that survive broker restarts: AMQPService + Publisher(at_least_once=True).

    python examples/reliable_publisher.py [--url URL]... [--queue NAME] [--count N]
                                          [--work SECONDS] [--flaky N] [--poison N]
                                          [--max-pending N] [--timeout SECONDS]

Starts a `txpika.AMQPService` on the broker (repeat ``--url`` for the nodes of a cluster:
each connection attempt goes to the next one), prints every change of the service's state,
declares the durable queue ``--queue`` (as ``twistd txpika --declare`` does, so either may
declare it first) through a robust channel, and publishes ``--count`` persistent JSON jobs
to it with an at-least-once publisher: each publish's Deferred fires only once the broker
has confirmed the message. If the connection is lost meanwhile, the service reconnects
(state ``recovering``, then ``open``), declares the queue again and the publisher
republishes, in order, every message the broker had not confirmed; a consumer may then see
a job twice. At most ``--max-pending`` jobs await confirmation at once.

Jobs are what ``examples/jobs_handler.py`` handles: ``{"id": 7, "work": 0.01}``;
``--flaky N`` makes N of them fail on their first delivery, ``--poison N`` makes N fail on
every delivery.

Exit status: 0 if every job was confirmed; 1 if the broker refused any (nack, or unroutable
with ``--no-declare`` and no queue), or if some were still unconfirmed after ``--timeout``
seconds (the broker stayed unreachable).
"""

import argparse
import json
import sys
import time

from twisted.internet import defer, task
from twisted.python.failure import Failure

import txpika

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"


def special_ids(count, flaky, poison):
    """Which job ids fail once and which always: spread evenly over the run."""
    total = min(count, flaky + poison)
    ids = [(k * count) // total for k in range(total)] if total else []
    return set(ids[:flaky]), set(ids[flaky:])


def job_body(number, args, flaky_ids, poison_ids):
    job = {"id": number, "work": args.work}
    if number in flaky_ids:
        job["fail"] = "once"
    elif number in poison_ids:
        job["fail"] = "always"
    return json.dumps(job).encode()


async def publish_jobs(service, args, tally, errors, say):
    """Declare the queue and publish the jobs; returns the publisher and the time it took."""
    # Waits through connecting (and its retries).
    await service.connection()
    channel = await service.channel()
    if args.declare:
        # Recorded by the robust channel: declared again on every new connection.
        await channel.queue_declare(args.queue, durable=True, exclusive=False,
                                    auto_delete=False)
    publisher = await service.publisher(at_least_once=True, max_pending=args.max_pending)
    flaky_ids, poison_ids = special_ids(args.count, args.flaky, args.poison)
    if flaky_ids or poison_ids:
        say(f"jobs failing once: {sorted(flaky_ids)}; always: {sorted(poison_ids)}")

    slots = defer.DeferredSemaphore(args.max_pending)

    def settled(result, number):
        slots.release()
        if not isinstance(result, Failure):
            tally["confirmed"] += 1
            return
        if result.check(txpika.NackError):
            tally["nacked"] += 1
        elif result.check(txpika.UnroutableError):
            tally["returned"] += 1
        elif result.check(txpika.FlowControlError):  # more than max_pending held
            tally["refused"] += 1
        else:
            tally["failed"] += 1
        errors.append(f"job {number}: {type(result.value).__name__}: {result.value}")

    say(f"publishing {args.count} jobs to {args.queue!r}")
    started = time.perf_counter()
    publishes = []
    for number in range(args.count):
        await slots.acquire()  # at most --max-pending unconfirmed
        properties = txpika.BasicProperties(
            content_type="application/json", delivery_mode=2, message_id=f"job-{number}")
        d = publisher.publish("", args.queue, job_body(number, args, flaky_ids, poison_ids),
                              properties=properties, mandatory=True)
        publishes.append(d.addBoth(settled, number))
    await defer.gatherResults(publishes)
    return publisher, time.perf_counter() - started


async def publish(reactor, args):
    started = time.perf_counter()

    def say(text):
        print(f"[{time.perf_counter() - started:7.3f} s] {text}", flush=True)

    service = txpika.AMQPService(reactor, args.urls)

    def state_changed(state):
        where = f" ({service.current_broker})" if state in ("open", "blocked") else ""
        say(f"service {state}{where}")

    service.add_state_listener(state_changed)
    service.add_queue_rename_listener(lambda old, new: say(f"queue {old} is now {new}"))
    tally = {"confirmed": 0, "nacked": 0, "returned": 0, "refused": 0, "failed": 0}
    errors = []
    service.startService()
    work = defer.ensureDeferred(publish_jobs(service, args, tally, errors, say))
    work.addTimeout(args.timeout, reactor)  # never hang: the broker may stay away
    try:
        publisher, elapsed = await work
    except defer.TimeoutError:
        unconfirmed = args.count - sum(tally.values())
        print(f"failed: {unconfirmed} of {args.count} jobs still unconfirmed after "
              f"{args.timeout:g} s (state {service.state}): is the broker reachable?",
              file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        await service.stopService()  # closes the connection cleanly: state closed

    for line in errors[:3] + ([f"... {len(errors) - 3} more"] if len(errors) > 3 else []):
        print(line)
    rate = args.count / elapsed if elapsed > 0 else float("inf")
    print(f"published {args.count} jobs to {args.queue!r} in {elapsed:.2f} s "
          f"({rate:,.0f} msg/s): " + ", ".join(f"{n} {what}" for what, n in tally.items())
          + f"; {publisher.republished} republished after recovery", flush=True)
    if tally["confirmed"] != args.count:
        raise SystemExit(1)


def report_failure(failure):
    if failure.check(SystemExit):
        return failure
    error = failure.value
    print(f"failed: {type(error).__name__}: {error}", file=sys.stderr)
    raise SystemExit(1)


def main(reactor, args):
    return defer.ensureDeferred(publish(reactor, args)).addErrback(report_failure)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", dest="urls", action="append", metavar="URL",
                        help="broker URL; repeat it for the nodes of a cluster (default "
                        + DEFAULT_URL.replace("%", "%%") + ")")
    parser.add_argument("--queue", default="jobs", help="queue (default jobs)")
    parser.add_argument("--count", type=int, default=100, help="jobs to publish (100)")
    parser.add_argument("--work", type=float, default=0.01, metavar="SECONDS",
                        help="how long each job pretends to work (0.01)")
    parser.add_argument("--flaky", type=int, default=0, metavar="N",
                        help="N jobs fail on their first delivery (0)")
    parser.add_argument("--poison", type=int, default=0, metavar="N",
                        help="N jobs fail on every delivery (0)")
    parser.add_argument("--no-declare", dest="declare", action="store_false",
                        help="do not declare the queue")
    parser.add_argument("--max-pending", type=int, default=1000, metavar="N",
                        help="jobs awaiting the broker's confirmation at most (1000)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="give up after this long (60)")
    args = parser.parse_args(argv)
    args.urls = args.urls or [DEFAULT_URL]
    if args.count < 0 or args.max_pending < 1 or min(args.flaky, args.poison) < 0:
        parser.error("--count, --flaky and --poison must not be negative, "
                     "--max-pending at least 1")
    return args


if __name__ == "__main__":
    task.react(main, [parse_args(sys.argv[1:])])
