"""Publish with publisher confirms and ``mandatory``: know what the broker did with each message.

    python examples/confirming_publisher.py [URL] [--queue NAME] [--count N]
                        [--routing-key KEY] [--no-declare] [--max-length N]

Declares the durable queue ``--queue`` (default ``txpika-example``; it expires after ten
minutes unused), turns on confirms and publishes ``--count`` persistent messages to it
through the default exchange. In confirm mode each publish's Deferred

- fires on the broker's ``basic.ack``: the broker took responsibility for the message;
- fails with ``txpika.NackError`` when the broker refused it (``basic.nack``);
- fails with ``txpika.UnroutableError`` when ``mandatory`` was set and no queue was bound to
  the routing key (``basic.return``); ``error.message`` is the returned message;
- fails with ``txpika.OutcomeUnknownError`` if the channel or connection went away before
  the broker answered: it may or may not have the message.

Try ``--routing-key nowhere`` to see every message come back unroutable, or
``--queue small --max-length 3`` to declare a queue that holds 3 messages at most and refuses
more (``x-overflow: reject-publish``), so the broker nacks the rest. Exits 0 if every
message was confirmed, 1 otherwise. consumer.py consumes what this publishes.
"""

import argparse
import sys

from twisted.internet import defer, task

import txpika

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"
# Must match consumer.py's declaration, or the broker refuses the second one (406).
QUEUE_ARGUMENTS = {"x-expires": 10 * 60 * 1000}  # ms: delete the queue after 10 min unused


async def publish(reactor, args):
    connection = await txpika.connect(reactor, args.url)
    connection.add_flow_listener(lambda active, reason: print(
        "broker", "unblocked publishers" if active else f"blocked publishers: {reason}"))
    try:
        channel = await connection.channel()
        if args.declare:
            arguments = dict(QUEUE_ARGUMENTS)
            if args.max_length is not None:
                arguments.update({"x-max-length": args.max_length,
                                  "x-overflow": "reject-publish"})
            await channel.queue_declare(args.queue, durable=True, arguments=arguments)
        await channel.confirm_select()

        routing_key = args.routing_key or args.queue
        publishes = []
        for i in range(args.count):
            properties = txpika.BasicProperties(
                content_type="text/plain", delivery_mode=2, message_id=f"example-{i}")
            publishes.append(channel.basic_publish(
                "", routing_key, f"message {i}".encode(), properties=properties,
                mandatory=True))
        # All publishes are in flight at once; wait for every outcome.
        results = await defer.DeferredList(publishes, consumeErrors=True)
    finally:
        await connection.close()

    tally = {"confirmed": 0, "nacked": 0, "returned": 0, "unknown": 0}
    failures = []
    for i, (ok, result) in enumerate(results):
        if ok:
            tally["confirmed"] += 1
            continue
        error = result.value
        if isinstance(error, txpika.NackError):
            tally["nacked"] += 1
            why = "nacked by the broker"
        elif isinstance(error, txpika.UnroutableError):
            tally["returned"] += 1
            why = (f"returned: {error.reply_code} {error.reply_text} "
                   f"(routing key {error.message.routing_key!r})")
        elif isinstance(error, txpika.OutcomeUnknownError):
            tally["unknown"] += 1
            why = f"outcome unknown ({error.reason}): republish if duplicates are harmless"
        else:
            raise error
        failures.append(f"message {i}: {why}")
    if len(failures) > 4:  # keep it short: the first three and the last
        failures[3:-1] = [f"... {len(failures) - 4} more ..."]
    for line in failures:
        print(line)
    print(f"published {args.count} to {routing_key!r}: "
          + ", ".join(f"{n} {what}" for what, n in tally.items()))
    if tally["confirmed"] != args.count:
        raise SystemExit(1)


def report_failure(failure):
    if failure.check(SystemExit):
        return failure
    error = failure.value
    print(f"failed: {type(error).__name__}: {error}", file=sys.stderr)
    raise SystemExit(1)


def main(reactor, args):
    d = defer.ensureDeferred(publish(reactor, args))
    d.addTimeout(60, reactor)  # never hang
    return d.addErrback(report_failure)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default=DEFAULT_URL,
                        help="broker URL (default %(default)s)")
    parser.add_argument("--url", dest="url_option", metavar="URL", help="same as URL")
    parser.add_argument("--queue", default="txpika-example", help="queue (txpika-example)")
    parser.add_argument("--count", type=int, default=10, help="messages to publish (10)")
    parser.add_argument("--routing-key", help="publish with this routing key (default: queue)")
    parser.add_argument("--no-declare", dest="declare", action="store_false",
                        help="do not declare the queue")
    parser.add_argument("--max-length", type=int, metavar="N",
                        help="declare the queue to refuse messages past N (broker nacks)")
    args = parser.parse_args(argv)
    args.url = args.url_option or args.url
    return args


if __name__ == "__main__":
    task.react(main, [parse_args(sys.argv[1:])])
