import json

from orders import handle_order, publish_orders
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase

from txpika.testing import MemoryBroker

ORDER = {"id": 7, "kind": "created", "lines": [{"price": 5, "qty": 3}, {"price": 2, "qty": 1}]}


class OrdersTests(SynchronousTestCase):
    def setUp(self):
        self.broker = MemoryBroker()
        self.broker.declare_exchange("orders", "topic")
        self.broker.declare_queue("orders")
        self.broker.bind_queue("orders", "orders", "order.created")
        self.broker.declare_queue("invoices")
        self.channel = self.successResultOf(self.connect_channel())

    def connect_channel(self):
        async def connect():
            connection = await self.broker.connect()
            return await connection.channel()

        d = ensureDeferred(connect())
        self.broker.flush()  # frames move both ways until nothing moves
        return d

    def test_handler_invoices_and_acks(self):
        self.channel.basic_consume("orders", handle_order)
        self.broker.publish("orders", "order.created", json.dumps(ORDER).encode())
        self.broker.flush()
        [invoice] = self.broker.queue("invoices").messages
        self.assertEqual(json.loads(invoice.body), {"order": 7, "total": 17})
        self.assertEqual(self.broker.queue("orders").unacked, ())

    def test_publisher_knows_what_the_broker_did(self):
        d = ensureDeferred(publish_orders(self.channel, [ORDER, dict(ORDER, kind="cancelled")]))
        self.assertNoResult(d)  # nothing moves until flush()
        self.broker.flush()
        self.assertEqual(self.successResultOf(d), ["confirmed", "returned"])
