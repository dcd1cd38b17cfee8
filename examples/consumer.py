"""A push consumer with prefetch, a coroutine callback and a clean shutdown.

    python examples/consumer.py [URL] [--queue NAME] [--prefetch N] [--count N]
                                [--timeout SECONDS] [--work SECONDS]

Consumes from the durable queue ``--queue`` (default ``txpika-example``, declared as
confirming_publisher.py declares it), at most ``--prefetch`` unacked messages at a time.
Each message goes to ``handle``, a coroutine: txpika runs it and logs its failure, if any.

It runs until Ctrl-C or SIGTERM, or until ``--count`` messages were handled, or until
``--timeout`` seconds passed. Stopping is clean in every case: cancel the consumer (no new
deliveries), let the handlers already running finish and ack, put back any message that
arrived after that, close the connection. Nothing acked is lost and nothing unacked is
dropped: the broker redelivers what was not acked.

Exit status: 0 after a clean stop (with ``--count``, only if that many were handled); 1 if
the broker cancelled the consumer, the connection failed, or ``--timeout`` passed before
``--count`` messages arrived.
"""

import argparse
import sys

from twisted.internet import defer, task
from twisted.python.failure import Failure

import txpika

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"
# Must match confirming_publisher.py's declaration, or the broker refuses the second one (406).
QUEUE_ARGUMENTS = {"x-expires": 10 * 60 * 1000}  # ms: delete the queue after 10 min unused


class Worker:
    def __init__(self, reactor, args):
        self.reactor = reactor
        self.args = args
        self.connection = None
        self.consumer = None
        self.handled = 0
        self.running = 0  # handlers started and not finished
        self.stopping = False
        self._idle = []  # Deferreds waiting for running to drop to 0
        self._stopped = []  # Deferreds waiting for the stop to complete
        self.done = False  # stopped
        self.failure = None  # why, if the run failed
        self._timer = None

    async def handle(self, message):
        """The push callback: a coroutine, one per message, up to ``prefetch`` at once."""
        if self.stopping or (self.args.count and self.handled + self.running >=
                             self.args.count):
            # Shutting down, or we have all we were asked for: give it back to the queue.
            await message.nack(requeue=True)
            return
        self.running += 1
        try:
            await task.deferLater(self.reactor, self.args.work)  # pretend to do some work
            print(f"handled {message.body.decode(errors='replace')!r}"
                  f"{' (redelivered)' if message.redelivered else ''}")
            await message.ack()
            self.handled += 1
        finally:
            self.running -= 1
            if not self.running:
                idle, self._idle = self._idle, []
                for d in idle:
                    d.callback(None)
        if self.args.count and self.handled == self.args.count:
            self.stop(f"handled {self.handled} messages")

    async def start(self):
        self.connection = await txpika.connect(self.reactor, self.args.url)
        channel = await self.connection.channel()
        await channel.queue_declare(self.args.queue, durable=True, arguments=QUEUE_ARGUMENTS)
        await channel.basic_qos(prefetch_count=self.args.prefetch)
        self.consumer = await channel.basic_consume(self.args.queue, self.handle)
        # The broker cancels the consumer if the queue is deleted; a lost connection or
        # channel ends it too. Either way, stop.
        self.consumer.when_closed().addCallback(self._consumer_ended)
        if self.args.timeout:
            self._timer = self.reactor.callLater(
                self.args.timeout, self.stop, f"{self.args.timeout:g} s passed")
        print(f"consuming from {self.args.queue!r} with prefetch {self.args.prefetch}; "
              "Ctrl-C to stop", flush=True)

    def _consumer_ended(self, _):
        if not self.stopping:
            self.stop(f"the consumer ended: {self.consumer.end_reason}", failed=True)

    def stop(self, why, failed=False):
        """Stop cleanly (once); returns a Deferred that fires when that is done."""
        if not self.stopping:
            self.stopping = True
            print(f"stopping: {why}", flush=True)
            d = defer.ensureDeferred(self._stop())
            if failed:
                d.addCallback(lambda _: defer.fail(RuntimeError(why)))
            d.addBoth(self._finished)
        return self.when_stopped()

    async def _stop(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.consumer.active:
            await self.consumer.cancel()  # no new deliveries after this fires
        if self.running:
            print(f"waiting for {self.running} running handlers", flush=True)
            d = defer.Deferred()
            self._idle.append(d)
            await d
        if self.connection.is_open:
            await self.connection.close()
        print(f"closed cleanly after {self.handled} messages", flush=True)
        if self.args.count and self.handled < self.args.count:
            raise RuntimeError(f"handled {self.handled} of {self.args.count} messages")

    def _finished(self, result):
        self.done = True
        if isinstance(result, Failure):
            self.failure = result
        stopped, self._stopped = self._stopped, []
        for d in stopped:
            d.callback(None)

    def when_stopped(self):
        """A Deferred that fires (never fails) once the worker has stopped."""
        if self.done:
            return defer.succeed(None)
        d = defer.Deferred()
        self._stopped.append(d)
        return d


async def consume(reactor, args):
    worker = Worker(reactor, args)
    try:
        await worker.start()
    except BaseException:
        if worker.connection is not None and worker.connection.is_open:
            await worker.connection.close()
        raise
    # Ctrl-C and SIGTERM make Twisted stop the reactor; "before shutdown" triggers may return
    # a Deferred, and the reactor waits for it: that is where the clean stop happens.
    reactor.addSystemEventTrigger("before", "shutdown", worker.stop, "shutdown requested")
    await worker.when_stopped()
    if worker.failure is not None:
        worker.failure.raiseException()


def report_failure(failure):
    if failure.check(SystemExit):
        return failure
    error = failure.value
    print(f"failed: {type(error).__name__}: {error}", file=sys.stderr)
    raise SystemExit(1)


def main(reactor, args):
    return defer.ensureDeferred(consume(reactor, args)).addErrback(report_failure)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default=DEFAULT_URL,
                        help="broker URL (default %(default)s)")
    parser.add_argument("--url", dest="url_option", metavar="URL", help="same as URL")
    parser.add_argument("--queue", default="txpika-example", help="queue (txpika-example)")
    parser.add_argument("--prefetch", type=int, default=10, help="unacked at most (10)")
    parser.add_argument("--count", type=int, default=0,
                        help="stop after handling this many messages (default: never)")
    parser.add_argument("--timeout", type=float, default=0,
                        help="stop after this many seconds (default: never)")
    parser.add_argument("--work", type=float, default=0.001, metavar="SECONDS",
                        help="pretend each message takes this long to handle (0.001)")
    args = parser.parse_args(argv)
    args.url = args.url_option or args.url
    if args.prefetch < 1:
        parser.error("--prefetch must be at least 1")
    return args


if __name__ == "__main__":
    task.react(main, [parse_args(sys.argv[1:])])
