import json

import pytest
from orders import handle_order, publish_orders

from txpika.testing import MemoryBroker

ORDER = {"id": 7, "kind": "created", "lines": [{"price": 5, "qty": 3}, {"price": 2, "qty": 1}]}


@pytest.fixture
def broker():
    broker = MemoryBroker()
    broker.declare_exchange("orders", "topic")
    broker.declare_exchange("rejected", "fanout")
    broker.declare_queue("orders", arguments={"x-dead-letter-exchange": "rejected"})
    broker.bind_queue("orders", "orders", "order.created")
    broker.declare_queue("dead-orders")
    broker.bind_queue("dead-orders", "rejected")
    broker.declare_queue("invoices")
    return broker


@pytest.fixture
def channel(broker):
    connection = broker.result(broker.connect())  # flush(), then the Deferred's result
    return broker.result(connection.channel())


def test_handler_invoices_and_acks(broker, channel):
    broker.result(channel.basic_consume("orders", handle_order))
    broker.publish("orders", "order.created", json.dumps(ORDER).encode())
    broker.flush()  # the delivery, the handler's publish and its ack
    [invoice] = broker.queue("invoices").messages
    assert json.loads(invoice.body) == {"order": 7, "total": 17}
    assert invoice.properties.delivery_mode == 2
    assert broker.queue("orders").messages == ()
    assert broker.queue("orders").unacked == ()


def test_handler_dead_letters_what_it_cannot_read(broker, channel):
    broker.result(channel.basic_consume("orders", handle_order))
    broker.publish("orders", "order.created", b"not json")
    broker.flush()
    [dead] = broker.queue("dead-orders").messages
    assert dead.body == b"not json"
    assert dead.headers["x-death"][0]["reason"] == "rejected"
    assert broker.queue("invoices").messages == ()


def test_publisher_knows_what_the_broker_did(broker, channel):
    orders = [ORDER, dict(ORDER, kind="cancelled")]  # nothing is bound to order.cancelled
    assert broker.result(publish_orders(channel, orders)) == ["confirmed", "returned"]
    [stored] = broker.queue("orders").messages
    assert json.loads(stored.body) == ORDER


def test_publisher_sees_nacks(broker, channel):
    broker.declare_queue("audit", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    broker.bind_queue("audit", "orders", "order.#")
    assert broker.result(publish_orders(channel, [ORDER, ORDER])) == ["confirmed", "nacked"]
