"""Declare a queue, publish 10 messages, consume them, ack, close: with async/await.

    python examples/async_await.py [URL]        (or --url URL)

The same task as callbacks.py and inline_callbacks.py, written as a coroutine: txpika's
Deferreds can be awaited, ``defer.ensureDeferred`` turns the coroutine into a Deferred, and
``task.react`` runs the reactor until it fires. Messages are consumed with ``async for``.
"""

import argparse
import sys

from twisted.internet import defer, task

import txpika

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"
COUNT = 10


async def publish_and_consume(reactor, url):
    connection = await txpika.connect(reactor, url)
    print("connected to", connection.parameters.describe())
    try:
        channel = await connection.channel()
        # A server-named queue: exclusive to this connection, deleted when it closes.
        ok = await channel.queue_declare("")
        print("declared queue", ok.queue)

        for i in range(COUNT):
            # Without confirms this fires when the message is handed to the transport.
            await channel.basic_publish("", ok.queue, b"message %d" % i)
        print(f"published {COUNT} messages")

        consumer = await channel.basic_consume(ok.queue)  # no callback: pull style
        received = []
        async for message in consumer:  # ends normally once the consumer is cancelled
            received.append(message.body)
            await message.ack()
            if len(received) == COUNT:
                await consumer.cancel()
        print(f"received and acked {len(received)} messages:", b", ".join(received).decode())
        if received != [b"message %d" % i for i in range(COUNT)]:
            raise RuntimeError("the messages did not come back in order")
    finally:
        await connection.close()
        print("closed")


def report_failure(failure):
    error = failure.value
    print(f"failed: {type(error).__name__}: {error}", file=sys.stderr)
    raise SystemExit(1)  # task.react exits with this code


def main(reactor, url):
    d = defer.ensureDeferred(publish_and_consume(reactor, url))
    d.addTimeout(30, reactor)  # never hang: fail after 30 s
    return d.addErrback(report_failure)


def parse_url(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default=DEFAULT_URL,
                        help="broker URL (default %(default)s)")
    parser.add_argument("--url", dest="url_option", metavar="URL", help="same as URL")
    args = parser.parse_args(argv)
    return args.url_option or args.url


if __name__ == "__main__":
    task.react(main, [parse_url(sys.argv[1:])])
