"""Declare a queue, publish 10 messages, consume them, ack, close: with Deferred callbacks.

    python examples/callbacks.py [URL]        (or --url URL)

The same task as inline_callbacks.py and async_await.py, written as a plain chain of
Deferred callbacks (no inlineCallbacks, no coroutines): each step is a method that returns
the next Deferred. Messages are consumed push-style: txpika calls ``on_message`` with each.
"""

import argparse
import sys

from twisted.internet import defer, task

import txpika

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"
COUNT = 10


class PublishAndConsume:
    def __init__(self, reactor, url):
        self.reactor = reactor
        self.url = url
        self.connection = None
        self.channel = None
        self.queue = None
        self.consumer = None
        self.received = []
        self.all_received = defer.Deferred()  # fires once COUNT messages are acked

    def run(self):
        d = txpika.connect(self.reactor, self.url)
        d.addCallback(self.connected)
        d.addCallback(self.channel_open)
        d.addCallback(self.queue_declared)
        d.addCallback(self.published)
        d.addCallback(self.consuming)
        d.addCallback(self.done)
        d.addBoth(self.close)  # success or failure: close the connection, pass the result on
        return d

    def connected(self, connection):
        self.connection = connection
        print("connected to", connection.parameters.describe())
        return connection.channel()

    def channel_open(self, channel):
        self.channel = channel
        # A server-named queue: exclusive to this connection, deleted when it closes.
        return channel.queue_declare("")

    def queue_declared(self, ok):
        self.queue = ok.queue
        print("declared queue", self.queue)
        publishes = [self.channel.basic_publish("", self.queue, b"message %d" % i)
                     for i in range(COUNT)]
        # Without confirms each Deferred fires when the message is handed to the transport.
        return defer.gatherResults(publishes, consumeErrors=True)

    def published(self, _):
        print(f"published {COUNT} messages")
        return self.channel.basic_consume(self.queue, self.on_message)

    def on_message(self, message):
        self.received.append(message.body)
        d = message.ack()  # fires once the ack is written
        if len(self.received) == COUNT:
            d.chainDeferred(self.all_received)
        return d  # a failure of the returned Deferred is logged by txpika

    def consuming(self, consumer):
        self.consumer = consumer
        # If the consumer ends first (its channel closed, its queue deleted), fail at once.
        consumer.when_closed().addCallback(self.consumer_ended)
        return self.all_received

    def consumer_ended(self, _):
        if not self.all_received.called:
            self.all_received.errback(self.consumer.end_reason)

    def done(self, _):
        print(f"received and acked {len(self.received)} messages:",
              b", ".join(self.received).decode())
        if self.received != [b"message %d" % i for i in range(COUNT)]:
            raise RuntimeError("the messages did not come back in order")
        return self.consumer.cancel()

    def close(self, result):
        if self.connection is None or not self.connection.is_open:
            return result
        d = self.connection.close()
        d.addCallback(lambda _: print("closed"))
        d.addCallback(lambda _: result)  # the chain's outcome (maybe a Failure) goes on
        return d


def report_failure(failure):
    error = failure.value
    print(f"failed: {type(error).__name__}: {error}", file=sys.stderr)
    raise SystemExit(1)  # task.react exits with this code


def main(reactor, url):
    d = PublishAndConsume(reactor, url).run()
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
