"""Application code that the "Testing your code" examples test: a handler and a publisher.

``handle_order`` is a consumer callback: it turns an order (JSON) into an invoice on the
``invoices`` queue, then acks. An order it cannot read is rejected without requeue, so it
goes to the queue's dead-letter exchange. ``publish_orders`` publishes orders in confirm
mode with ``mandatory`` and tells, for each, what the broker did with it.

test_orders.py (plain pytest) and test_orders_trial.py (trial) test both against
``txpika.testing.MemoryBroker``, with no broker, no socket and no reactor.
"""

import json

from twisted.internet.defer import DeferredList

import txpika

JSON = txpika.BasicProperties(content_type="application/json", delivery_mode=2)


async def handle_order(message):
    try:
        order = json.loads(message.body)
        total = sum(line["price"] * line["qty"] for line in order["lines"])
    except (ValueError, KeyError, TypeError):
        await message.reject(requeue=False)  # to the dead-letter exchange
        return
    invoice = {"order": order["id"], "total": total}
    await message.channel.basic_publish("", "invoices", json.dumps(invoice).encode(),
                                        properties=JSON)
    await message.ack()


async def publish_orders(channel, orders):
    """Publish each order to the "orders" exchange; "confirmed", "returned" or "nacked"."""
    await channel.confirm_select()
    publishes = [channel.basic_publish("orders", f"order.{order['kind']}",
                                       json.dumps(order).encode(), properties=JSON,
                                       mandatory=True)
                 for order in orders]
    outcomes = []
    for ok, result in await DeferredList(publishes, consumeErrors=True):
        if ok:
            outcomes.append("confirmed")
        elif result.check(txpika.UnroutableError):
            outcomes.append("returned")
        elif result.check(txpika.NackError):
            outcomes.append("nacked")
        else:
            result.raiseException()
    return outcomes
