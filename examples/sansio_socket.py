"""Drive txpika's sans-IO core with a plain blocking socket: no Twisted, no threads.

    python examples/sansio_socket.py [amqp://guest:guest@127.0.0.1:5672/%2F]

The core never touches the network: we feed it bytes, pull events, and write out what it
asks us to. This script connects, declares a queue, publishes three messages with publisher
confirms, gets them back and closes.
"""

import socket
import sys
from urllib.parse import unquote, urlsplit

from txpika import events, spec
from txpika.auth import PlainCredentials
from txpika.connection import NEED_DATA, Connection

url = urlsplit(sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@127.0.0.1:5672/%2F")
conn = Connection(
    credentials=PlainCredentials(unquote(url.username or "guest"),
                                 unquote(url.password or "guest")),
    virtual_host=unquote(url.path[1:]) if len(url.path) > 1 else "/",
    heartbeat=0,  # a short script: no heartbeats, so no timer to drive
)
sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 5672), timeout=10)


def wait_for(wanted):
    """Pump bytes both ways until an event of type ``wanted`` arrives; return it."""
    while True:
        event = conn.next_event()
        sock.sendall(conn.data_to_send())  # whatever the core queued (maybe nothing)
        if event is NEED_DATA:  # the bytes received so far hold no more events
            data = sock.recv(65536)  # blocks, at most 10 s (the socket timeout)
            if not data:
                conn.connection_lost(ConnectionResetError("the broker hung up"))
            conn.receive_data(data)
        elif isinstance(event, wanted):
            return event
        elif isinstance(event, (events.ConnectionClosed, events.ChannelClosed)):
            raise SystemExit(f"unexpected close: {event.error}")


def call(channel, method):
    """Send a synchronous method and return the broker's reply (or the got message)."""
    conn.send_method(channel, method)
    reply = wait_for((events.MethodReceived, events.MessageReceived))
    return reply if isinstance(reply, events.MessageReceived) else reply.method


conn.initiate()  # queues the protocol header
opened = wait_for(events.ConnectionOpened)
print("connected to RabbitMQ", opened.server_properties.get("version", "?"))
channel = conn.open_channel()
wait_for(events.ChannelOpened)
queue = call(channel, spec.Queue.Declare(queue="", exclusive=True)).queue
print("declared queue", queue)

call(channel, spec.Confirm.Select())  # from now on basic_publish returns a sequence number
pending = {conn.basic_publish(channel, "", queue, b"message %d" % i) for i in range(3)}
confirmed = 0
while pending:
    ack = wait_for(events.PublishAcked)  # one ack may cover several publishes
    pending.difference_update(ack.delivery_tags)
    confirmed += len(ack.delivery_tags)
print(f"{confirmed} of 3 publishes confirmed")

for _ in range(3):
    message = call(channel, spec.Basic.Get(queue=queue, no_ack=True))
    print("got", message.body)

conn.close()
closed = wait_for(events.ConnectionClosed)  # arrives with the broker's close-ok
print("closed:", closed.error)
sock.close()
