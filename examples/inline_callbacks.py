"""Declare a queue, publish 10 messages, consume them, ack, close: with inlineCallbacks.

    python examples/inline_callbacks.py [URL]        (or --url URL)

The same task as callbacks.py and async_await.py, written as a generator decorated with
``twisted.internet.defer.inlineCallbacks``: each ``yield`` waits for a Deferred. Messages are
pulled one at a time with ``consumer.get()``.
"""

import argparse
import sys

from twisted.internet import defer, task

import txpika

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"
COUNT = 10


@defer.inlineCallbacks
def publish_and_consume(reactor, url):
    connection = yield txpika.connect(reactor, url)
    print("connected to", connection.parameters.describe())
    try:
        channel = yield connection.channel()
        # A server-named queue: exclusive to this connection, deleted when it closes.
        ok = yield channel.queue_declare("")
        print("declared queue", ok.queue)

        for i in range(COUNT):
            # Without confirms this fires when the message is handed to the transport.
            yield channel.basic_publish("", ok.queue, b"message %d" % i)
        print(f"published {COUNT} messages")

        consumer = yield channel.basic_consume(ok.queue)  # no callback: pull style
        received = []
        for _ in range(COUNT):
            message = yield consumer.get()
            received.append(message.body)
            yield message.ack()
        yield consumer.cancel()
        print(f"received and acked {len(received)} messages:", b", ".join(received).decode())
        if received != [b"message %d" % i for i in range(COUNT)]:
            raise RuntimeError("the messages did not come back in order")
    finally:
        yield connection.close()
        print("closed")


def report_failure(failure):
    error = failure.value
    print(f"failed: {type(error).__name__}: {error}", file=sys.stderr)
    raise SystemExit(1)  # task.react exits with this code


def main(reactor, url):
    d = publish_and_consume(reactor, url)
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
