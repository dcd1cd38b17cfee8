"""An RPC server: answers requests on a queue, replying to each caller's ``reply_to``.

    python examples/rpc_server.py [URL] [--queue NAME] [--count N] [--timeout SECONDS]

Consumes requests from the durable queue ``--queue`` (default ``txpika-rpc``; it expires
after ten minutes unused). A request's body is a number n; the reply is the n-th Fibonacci
number, published through the default exchange to the request's ``reply_to`` (with direct
reply-to, ``amq.rabbitmq.reply-to.<token>``: the broker routes it straight to the caller's
connection) with the request's ``correlation_id``, so the caller can match it. The request
is acked after the reply is handed to the transport. rpc_client.py is the other side.

Runs until Ctrl-C or SIGTERM, until it answered ``--count`` requests, or until ``--timeout``
seconds passed; then it cancels its consumer and closes cleanly. Exit status 0 after a clean
stop (with ``--count``, only if that many requests were answered), 1 otherwise.
"""

import argparse
import sys

from twisted.internet import defer, task

import txpika

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"
QUEUE_ARGUMENTS = {"x-expires": 10 * 60 * 1000}  # ms: delete the queue after 10 min unused
MAX_N = 10_000  # refuse absurd requests


def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class RPCServer:
    def __init__(self, reactor, args):
        self.reactor = reactor
        self.args = args
        self.connection = None
        self.channel = None
        self.consumer = None
        self.answered = 0
        self.stopping = False
        self.stopped = defer.Deferred()  # fires when stopped, fails if the run failed
        self._timer = None

    async def start(self):
        self.connection = await txpika.connect(self.reactor, self.args.url)
        self.channel = await self.connection.channel()
        await self.channel.queue_declare(self.args.queue, durable=True,
                                         arguments=QUEUE_ARGUMENTS)
        await self.channel.basic_qos(prefetch_count=self.args.prefetch)
        self.consumer = await self.channel.basic_consume(self.args.queue, self.on_request)
        self.consumer.when_closed().addCallback(self._consumer_ended)
        if self.args.timeout:
            self._timer = self.reactor.callLater(
                self.args.timeout, self.stop, f"{self.args.timeout:g} s passed")
        print(f"RPC server ready on queue {self.args.queue!r}", flush=True)

    async def on_request(self, message):
        """The push callback (a coroutine): answer one request, then ack it."""
        if self.stopping:
            await message.nack(requeue=True)  # another server instance may answer it
            return
        reply_to = message.properties.reply_to
        correlation_id = message.properties.correlation_id
        if not reply_to:
            print("dropping a request without reply_to", flush=True)
            await message.reject(requeue=False)
            return
        try:
            n = int(message.body)
            if not 0 <= n <= MAX_N:
                raise ValueError(f"n must be in 0..{MAX_N}")
            answer = str(fib(n)).encode()
        except ValueError as exc:
            n, answer = message.body, f"error: {exc}".encode()
        await self.channel.basic_publish(
            "", reply_to, answer,
            properties=txpika.BasicProperties(correlation_id=correlation_id))
        await message.ack()
        self.answered += 1
        print(f"fib({n}) -> {answer[:40].decode()} (correlation_id {correlation_id})",
              flush=True)
        if self.args.count and self.answered >= self.args.count:
            self.stop(f"answered {self.answered} requests")

    def _consumer_ended(self, _):
        if not self.stopping:
            self.stop(f"the consumer ended: {self.consumer.end_reason}", failed=True)

    def stop(self, why, failed=False):
        """Cancel the consumer and close (once). Returns a Deferred for the reactor's
        shutdown trigger: it fires when the connection is closed."""
        if not self.stopping:
            self.stopping = True
            print(f"stopping: {why}", flush=True)
            d = defer.ensureDeferred(self._stop(failed and why))
            d.chainDeferred(self.stopped)
        done = defer.Deferred()
        self.stopped.addBoth(lambda result: (done.callback(None), result)[1])
        return done

    async def _stop(self, failure_reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.consumer.active:
            await self.consumer.cancel()
        if self.connection.is_open:
            await self.connection.close()
        print(f"closed after answering {self.answered} requests", flush=True)
        if failure_reason:
            raise RuntimeError(failure_reason)
        if self.args.count and self.answered < self.args.count:
            raise RuntimeError(f"answered {self.answered} of {self.args.count} requests")


async def serve(reactor, args):
    server = RPCServer(reactor, args)
    try:
        await server.start()
    except BaseException:
        if server.connection is not None and server.connection.is_open:
            await server.connection.close()
        raise
    # Ctrl-C and SIGTERM stop the reactor; it waits for the Deferred this trigger returns.
    reactor.addSystemEventTrigger("before", "shutdown", server.stop, "shutdown requested")
    await server.stopped


def report_failure(failure):
    if failure.check(SystemExit):
        return failure
    error = failure.value
    print(f"failed: {type(error).__name__}: {error}", file=sys.stderr)
    raise SystemExit(1)


def main(reactor, args):
    return defer.ensureDeferred(serve(reactor, args)).addErrback(report_failure)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default=DEFAULT_URL,
                        help="broker URL (default %(default)s)")
    parser.add_argument("--url", dest="url_option", metavar="URL", help="same as URL")
    parser.add_argument("--queue", default="txpika-rpc", help="request queue (txpika-rpc)")
    parser.add_argument("--prefetch", type=int, default=10, help="unacked at most (10)")
    parser.add_argument("--count", type=int, default=0,
                        help="stop after answering this many requests (default: never)")
    parser.add_argument("--timeout", type=float, default=0,
                        help="stop after this many seconds (default: never)")
    args = parser.parse_args(argv)
    args.url = args.url_option or args.url
    if args.prefetch < 1:
        parser.error("--prefetch must be at least 1")
    return args


if __name__ == "__main__":
    task.react(main, [parse_args(sys.argv[1:])])
