"""An RPC client over direct reply-to: several calls in flight, matched by correlation_id.

    python examples/rpc_client.py [URL] [--queue NAME] [--count N] [--timeout SECONDS]

Asks rpc_server.py (listening on ``--queue``, default ``txpika-rpc``) for fib(0) ..
fib(N-1), all at once, and checks the answers.

Direct reply-to: instead of declaring a reply queue, the client consumes from the pseudo-queue
``amq.rabbitmq.reply-to`` (with ``auto_ack=True``, as RabbitMQ requires) and sets
``reply_to="amq.rabbitmq.reply-to"`` on its requests; the broker rewrites it to a name that
routes replies straight back to this channel. Each request carries a fresh
``correlation_id``; a reply is matched to its call by it, so replies may come in any order.

Requests are published with confirms and ``mandatory``, so a missing request queue fails at
once with ``txpika.UnroutableError`` instead of waiting for the timeout. Each call fails with
``twisted.internet.defer.TimeoutError`` if no reply comes within ``--timeout`` seconds
(default 10). Exit status 0 if every answer came back and is right, 1 otherwise.
"""

import argparse
import sys
import uuid

from twisted.internet import defer, task

import txpika

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"
REPLY_TO = "amq.rabbitmq.reply-to"


def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class RPCClient:
    def __init__(self, reactor, channel, queue):
        self.reactor = reactor
        self.channel = channel
        self.queue = queue
        self.pending = {}  # correlation_id -> Deferred of the call

    async def start(self):
        # Must consume from the pseudo-queue before publishing with reply_to set to it.
        await self.channel.basic_consume(REPLY_TO, self.on_reply, auto_ack=True)

    def on_reply(self, message):
        d = self.pending.pop(message.properties.correlation_id, None)
        if d is None:  # a late reply to a call that timed out
            print(f"ignoring a reply for unknown correlation_id "
                  f"{message.properties.correlation_id!r}")
            return
        d.callback(message.body)

    def call(self, body, timeout):
        """Send a request; the Deferred fires with the reply's body."""
        correlation_id = uuid.uuid4().hex
        result = defer.Deferred(lambda _: self.pending.pop(correlation_id, None))
        self.pending[correlation_id] = result
        properties = txpika.BasicProperties(reply_to=REPLY_TO, correlation_id=correlation_id)
        published = self.channel.basic_publish("", self.queue, body, properties=properties,
                                               mandatory=True)

        def not_sent(failure):  # unroutable (no request queue), nacked, or the channel closed
            if self.pending.pop(correlation_id, None) is not None:
                result.errback(failure)

        published.addErrback(not_sent)
        return result.addTimeout(timeout, self.reactor)


async def run(reactor, args):
    connection = await txpika.connect(reactor, args.url)
    try:
        channel = await connection.channel()
        await channel.confirm_select()
        client = RPCClient(reactor, channel, args.queue)
        await client.start()
        numbers = range(args.count)
        calls = [client.call(str(n).encode(), args.timeout) for n in numbers]
        print(f"sent {len(calls)} requests to {args.queue!r}")
        results = await defer.DeferredList(calls, consumeErrors=True)
    finally:
        await connection.close()

    wrong = 0
    for n, (ok, result) in zip(numbers, results, strict=True):
        if not ok:
            error = result.value
            wrong += 1
            if isinstance(error, txpika.UnroutableError):
                print(f"fib({n}): no request queue {args.queue!r} (is rpc_server.py running?)")
            elif isinstance(error, defer.TimeoutError):
                print(f"fib({n}): no reply within {args.timeout:g} s")
            else:
                print(f"fib({n}): failed: {type(error).__name__}: {error}")
        elif result != str(fib(n)).encode():
            wrong += 1
            print(f"fib({n}) = {result.decode(errors='replace')}  WRONG")
        else:
            print(f"fib({n}) = {result.decode()}")
    print(f"{args.count - wrong} of {args.count} answers right")
    if wrong:
        raise SystemExit(1)


def report_failure(failure):
    if failure.check(SystemExit):
        return failure
    error = failure.value
    print(f"failed: {type(error).__name__}: {error}", file=sys.stderr)
    raise SystemExit(1)


def main(reactor, args):
    d = defer.ensureDeferred(run(reactor, args))
    d.addTimeout(args.timeout + 30, reactor)  # the whole run is bounded too
    return d.addErrback(report_failure)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default=DEFAULT_URL,
                        help="broker URL (default %(default)s)")
    parser.add_argument("--url", dest="url_option", metavar="URL", help="same as URL")
    parser.add_argument("--queue", default="txpika-rpc", help="request queue (txpika-rpc)")
    parser.add_argument("--count", type=int, default=10, help="calls to make (10)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for each reply (10)")
    args = parser.parse_args(argv)
    args.url = args.url_option or args.url
    return args


if __name__ == "__main__":
    task.react(main, [parse_args(sys.argv[1:])])
