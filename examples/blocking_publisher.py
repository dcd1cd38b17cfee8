"""Publish confirmed messages from a plain script: no Twisted, no reactor.

    python examples/blocking_publisher.py [URL] [--queue NAME] [--count N]

Declares the durable queue ``--queue`` and publishes ``--count`` persistent messages to it
in one pipelined batch, each confirmed by the broker. Every wait is bounded. Exit status 0
if the broker confirmed every message, 1 otherwise.
"""

import argparse
import sys

from txpika import BasicProperties, blocking

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("url", nargs="?", default="amqp://guest:guest@localhost:5672/%2F",
                    help="broker URL (default: %(default)s)")
parser.add_argument("--queue", default="txpika-blocking-example")
parser.add_argument("--count", type=int, default=10)
args = parser.parse_args()

with blocking.connect(args.url, connection_timeout=10) as conn:
    channel = conn.channel(timeout=10)
    channel.queue_declare(args.queue, durable=True, auto_delete=False, timeout=10)
    channel.confirm_select(timeout=10)
    persistent = BasicProperties(delivery_mode=2, content_type="text/plain")
    batch = [("", args.queue, f"message {i}".encode(), persistent) for i in range(args.count)]
    outcomes = channel.publish_batch(batch, timeout=30)  # one outcome per message
failed = [outcome for outcome in outcomes if outcome is not None]
for error in failed:
    print(f"not confirmed: {error}")
print(f"published {args.count - len(failed)} of {args.count} to {args.queue}")
sys.exit(1 if failed else 0)
