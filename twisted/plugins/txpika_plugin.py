"""The ``twistd txpika`` plugin: a consumer daemon (see txpika.tap)."""

from twisted.application.service import ServiceMaker

txpika = ServiceMaker(
    "txpika AMQP consumer",
    "txpika.tap",
    "Consume an AMQP queue with a Python handler, recovering from broker restarts.",
    "txpika",
)
