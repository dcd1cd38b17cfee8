"""Declare a queue, publish 10 messages, consume them, ack, close: with asyncio.

    python examples/aio_async_await.py [URL]    (or --url URL; --uvloop to run on uvloop)

The same task as callbacks.py, inline_callbacks.py and async_await.py, on the standard
library's event loop instead of Twisted's reactor: ``txpika.aio`` drives the same core, with
the same method names, results and errors. No Twisted is imported. Messages are consumed
with ``async for``; ``asyncio.timeout`` bounds the whole run.
"""

import argparse
import asyncio
import sys

from txpika import aio

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"
COUNT = 10


async def publish_and_consume(url):
    async with await aio.connect(url) as connection:  # closed at the end of the block
        print("connected to", connection.parameters.describe())
        channel = await connection.channel()
        # A server-named queue: exclusive to this connection, deleted when it closes.
        ok = await channel.queue_declare("")
        print("declared queue", ok.queue)

        for i in range(COUNT):
            # Without confirms this is done when the message is handed to the transport.
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
    print("closed")


async def main(url):
    try:
        async with asyncio.timeout(30):  # never hang: fail after 30 s
            await publish_and_consume(url)
    except Exception as error:
        print(f"failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default=DEFAULT_URL,
                        help="broker URL (default %(default)s)")
    parser.add_argument("--url", dest="url_option", metavar="URL", help="same as URL")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args(argv)
    return args.url_option or args.url, args.uvloop


if __name__ == "__main__":
    url, use_uvloop = parse_args(sys.argv[1:])
    if use_uvloop:
        import uvloop

        sys.exit(uvloop.run(main(url)))
    sys.exit(asyncio.run(main(url)))
