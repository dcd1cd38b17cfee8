"""Threads sharing one blocking connection: publishers and a consumer at once.

    python examples/blocking_threads.py [URL] [--threads N] [--count N]

One `BlockingConnection` serves every thread (its lock keeps their frames apart). Each of
``--threads`` publisher threads opens its own channel in confirm mode and publishes
``--count`` messages, each returning once the broker confirmed it; one consumer thread reads
them all from a server-named queue on a channel of its own. Every wait is bounded. Exit
status 0 if every message was confirmed and consumed, 1 otherwise.
"""

import argparse
import sys
import threading

from txpika import blocking

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("url", nargs="?", default="amqp://guest:guest@localhost:5672/%2F",
                    help="broker URL (default: %(default)s)")
parser.add_argument("--threads", type=int, default=4)
parser.add_argument("--count", type=int, default=100, help="messages per publisher thread")
args = parser.parse_args()
total = args.threads * args.count
confirmed = []  # list.append is atomic: one entry per confirmed message
consumed = []


def publish(conn, queue, name):
    with conn.channel(timeout=10) as channel:  # a channel per thread
        channel.confirm_select(timeout=10)
        for i in range(args.count):
            channel.basic_publish("", queue, f"{name} {i}".encode(), timeout=10)
            confirmed.append(name)


def consume(channel, queue):
    for message in channel.consume(queue, prefetch=50, inactivity_timeout=10):
        if message is None:  # nothing for 10 s: give up
            return
        consumed.append(message.body)
        message.ack()
        if len(consumed) == total:
            return


with blocking.connect(args.url, connection_timeout=10) as conn:
    consumer_channel = conn.channel(timeout=10)
    queue = consumer_channel.queue_declare("", timeout=10).queue  # exclusive, auto-delete
    threads = [threading.Thread(target=consume, args=(consumer_channel, queue))]
    threads += [threading.Thread(target=publish, args=(conn, queue, f"thread-{n}"))
                for n in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
ok = len(confirmed) == len(set(consumed)) == total
print(f"published {total}, confirmed {len(confirmed)}, consumed {len(consumed)}")
sys.exit(0 if ok else 1)
