"""txpika: a Twisted-native AMQP 0-9-1 client (it also speaks 0-8).

The public API is re-exported here; see README.rst and the docstrings of each name.
Names that need Twisted (``connect``, ``AMQPProtocol``, ``Channel``...) are imported on
first use, so that ``import txpika.blocking`` and the sans-IO core never import Twisted.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from txpika.auth import AMQPlainCredentials, ExternalCredentials, PlainCredentials
from txpika.errors import (
    AccessRefused,
    AMQPError,
    AuthenticationError,
    ChannelClosed,
    ChannelClosedByBroker,
    ChannelClosedByClient,
    ConnectionClosed,
    ConnectionClosedByBroker,
    ConnectionClosedByClient,
    ConnectionLost,
    ConnectionRecovering,
    ConsumerCancelled,
    FlowControlError,
    HeartbeatTimeout,
    MessageTooLarge,
    NackError,
    NotFound,
    OutcomeUnknownError,
    PreconditionFailed,
    ProtocolError,
    ResourceLocked,
    ServiceStopped,
    UnroutableError,
    UsageError,
)
from txpika.parameters import ConnectionParameters, InvalidParameter, parse_url
from txpika.spec import BasicProperties

if TYPE_CHECKING:
    from txpika._connect import connect
    from txpika.channel import Channel, Consumer, Message
    from txpika.client import AMQPService, ServiceState
    from txpika.consumer import ConsumerService
    from txpika.protocol import AMQPClientFactory, AMQPProtocol
    from txpika.publisher import Publisher
    from txpika.robust import RobustChannel, RobustConsumer

#: Public names that live in Twisted-dependent modules: name -> module.
_LAZY = {
    "connect": "txpika._connect",
    "Consumer": "txpika.channel",
    "Channel": "txpika.channel",
    "Message": "txpika.channel",
    "AMQPClientFactory": "txpika.protocol",
    "AMQPProtocol": "txpika.protocol",
    "AMQPService": "txpika.client",
    "ServiceState": "txpika.client",
    "ConsumerService": "txpika.consumer",
    "Publisher": "txpika.publisher",
    "RobustChannel": "txpika.robust",
    "RobustConsumer": "txpika.robust",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'txpika' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__version__ = "0.1.0.dev0"

__all__ = [
    "AMQPClientFactory",
    "AMQPError",
    "AMQPProtocol",
    "AMQPService",
    "AMQPlainCredentials",
    "AccessRefused",
    "AuthenticationError",
    "BasicProperties",
    "Channel",
    "ChannelClosed",
    "ChannelClosedByBroker",
    "ChannelClosedByClient",
    "ConnectionClosed",
    "ConnectionClosedByBroker",
    "ConnectionClosedByClient",
    "ConnectionLost",
    "ConnectionParameters",
    "ConnectionRecovering",
    "Consumer",
    "ConsumerCancelled",
    "ConsumerService",
    "ExternalCredentials",
    "FlowControlError",
    "HeartbeatTimeout",
    "InvalidParameter",
    "Message",
    "MessageTooLarge",
    "NackError",
    "NotFound",
    "OutcomeUnknownError",
    "PlainCredentials",
    "PreconditionFailed",
    "ProtocolError",
    "Publisher",
    "ResourceLocked",
    "RobustChannel",
    "RobustConsumer",
    "ServiceState",
    "ServiceStopped",
    "UnroutableError",
    "UsageError",
    "connect",
    "parse_url",
]
