"""Consume a queue from a plain script: no Twisted, no reactor.

    python examples/blocking_consumer.py [URL] [--queue NAME] [--prefetch N]
                                         [--idle SECONDS] [--count N]

Reads the durable queue ``--queue`` (as blocking_publisher.py declares it), at most
``--prefetch`` unacked messages at a time, printing and acking each. It stops once the queue
was idle for ``--idle`` seconds, or after ``--count`` messages; leaving the loop cancels the
consumer, and what was not acked goes back to the queue. Exit status 0, or 1 if ``--count``
was given and fewer messages came.
"""

import argparse
import sys

from txpika import blocking

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("url", nargs="?", default="amqp://guest:guest@localhost:5672/%2F",
                    help="broker URL (default: %(default)s)")
parser.add_argument("--queue", default="txpika-blocking-example")
parser.add_argument("--prefetch", type=int, default=10)
parser.add_argument("--idle", type=float, default=2.0)
parser.add_argument("--count", type=int, default=0)
args = parser.parse_args()

handled = 0
with blocking.connect(args.url, connection_timeout=10) as conn:
    channel = conn.channel(timeout=10)
    channel.queue_declare(args.queue, durable=True, auto_delete=False, timeout=10)
    for message in channel.consume(args.queue, prefetch=args.prefetch,
                                   inactivity_timeout=args.idle):
        if message is None:  # nothing for --idle seconds
            break
        print(message.body.decode())
        message.ack()
        handled += 1
        if handled == args.count:
            break
print(f"consumed {handled} messages")
sys.exit(1 if args.count and handled < args.count else 0)
