"""A virtual host of the memory broker: exchanges, queues, bindings, routing and
dead-lettering, with RabbitMQ's checks, reply codes and reply texts.

Every refusal is a `txpika.testing._model.Fault` raised before anything changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from txpika import errors
from txpika.spec import BasicProperties
from txpika.testing._model import (
    BrokerMessage,
    Clock,
    Entry,
    Fault,
    headers_match,
    not_implemented,
    server_name,
    topic_match,
)
from txpika.testing._queue import Queue

__all__ = ["Binding", "Exchange", "VirtualHost"]

EXCHANGE_TYPES: Final = ("direct", "fanout", "topic", "headers")
#: The exchanges every virtual host starts with: name -> (type, internal).
SYSTEM_EXCHANGES: Final = {
    "amq.direct": ("direct", False),
    "amq.fanout": ("fanout", False),
    "amq.topic": ("topic", False),
    "amq.headers": ("headers", False),
    "amq.match": ("headers", False),
    "amq.rabbitmq.trace": ("topic", True),
}
#: Queue arguments RabbitMQ compares on a redeclare.
_QUEUE_ARGS: Final = (
    "x-expires", "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key",
    "x-max-length", "x-max-length-bytes", "x-max-priority", "x-overflow", "x-queue-mode",
    "x-single-active-consumer", "x-queue-type", "x-max-in-memory-length",
    "x-max-in-memory-bytes", "x-delivery-limit",
)
_OVERFLOW: Final = ("drop-head", "reject-publish", "reject-publish-dlx")
_NOT_FOUND = errors.NOT_FOUND


@dataclass(frozen=True, slots=True)
class Binding:
    """A binding from the exchange ``source`` to a queue or an exchange."""

    #: The exchange the binding routes from.
    source: str
    #: The queue or exchange it routes to.
    destination: str
    #: ``"queue"`` or ``"exchange"``.
    destination_type: str
    #: The binding key.
    routing_key: str = ""
    #: The binding's arguments (for headers exchanges: ``x-match`` and the headers).
    arguments: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(slots=True)
class Exchange:
    """An exchange; ``bindings`` are those it routes along (it is their source)."""

    #: Its name (``""`` for the default exchange).
    name: str
    #: ``direct``, ``fanout``, ``topic`` or ``headers``.
    type: str
    #: Declared durable.
    durable: bool = False
    #: Deleted when its last binding goes.
    auto_delete: bool = False
    #: Internal: clients may not publish to it.
    internal: bool = False
    #: The arguments it was declared with (``alternate-exchange``...).
    arguments: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Its bindings, in the order they were made.
    bindings: list[Binding] = dataclasses.field(default_factory=list)

    def matches(self, binding: Binding, keys: tuple[str, ...],
                headers: Mapping[str, Any]) -> bool:
        """Whether ``binding`` (one of ours) takes a message with ``keys`` and ``headers``."""
        if self.type == "fanout":
            return True
        if self.type == "direct":
            return binding.routing_key in keys
        if self.type == "topic":
            return any(topic_match(binding.routing_key, key) for key in keys)
        return headers_match(binding.arguments, headers)


class VirtualHost:
    """One virtual host's entities. ``clock`` gives time to TTLs and ``x-death``."""

    def __init__(self, name: str, clock: Clock) -> None:
        #: Its name.
        self.name = name
        #: The clock its timers run on.
        self.clock = clock
        #: Exchange name -> `txpika.testing.Exchange` (the ``amq.*`` ones included).
        self.exchanges: dict[str, Exchange] = {
            name: Exchange(name, kind, durable=True, internal=internal)
            for name, (kind, internal) in SYSTEM_EXCHANGES.items()
        }
        #: Queue name -> `txpika.testing.Queue`.
        self.queues: dict[str, Queue] = {}

    def now(self) -> float:
        """The broker clock's time, in seconds."""
        return self.clock.seconds()

    def _in(self) -> str:
        return f"in vhost '{self.name}'"

    # -- exchanges ---------------------------------------------------------------------------

    def exchange(self, name: str) -> Exchange:
        """The exchange ``name``; 404 if missing, 403 for the default exchange."""
        if name == "":
            raise Fault(errors.ACCESS_REFUSED, "operation not permitted on the default exchange")
        found = self.exchanges.get(name)
        if found is None:
            raise Fault(_NOT_FOUND, f"no exchange '{name}' {self._in()}")
        return found

    def declare_exchange(self, name: str, kind: str, *, passive: bool, durable: bool,
                         auto_delete: bool, internal: bool,
                         arguments: Mapping[str, Any]) -> None:
        """``exchange.declare`` with RabbitMQ's checks (503 unknown type, 403 ``amq.*``,
        406 inequivalent)."""
        if passive:
            if name:
                self.exchange(name)
            return
        if kind not in EXCHANGE_TYPES:
            if kind.startswith("x-"):
                raise not_implemented(f"the exchange type '{kind}'")
            raise Fault(errors.COMMAND_INVALID, f"unknown exchange type '{kind}'")
        if name == "":
            self.exchange(name)  # refused: the default exchange
        found = self.exchanges.get(name)
        if found is None:
            if name.startswith("amq."):
                raise Fault(errors.ACCESS_REFUSED,
                            f"exchange name '{name}' contains reserved prefix 'amq.*'")
            self.exchanges[name] = Exchange(name, kind, durable, auto_delete, internal,
                                            dict(arguments))
            return
        what = f"for exchange '{name}' {self._in()}"
        for field, have, want in (("type", found.type, kind), ("durable", found.durable, durable),
                                  ("auto_delete", found.auto_delete, auto_delete),
                                  ("internal", found.internal, internal)):
            if have != want:
                raise Fault(errors.PRECONDITION_FAILED,
                            f"inequivalent arg '{field}' {what}: received {_fmt(want)} but "
                            f"current is {_fmt(have)}")
        _same_args(found.arguments, arguments, ("alternate-exchange",), what)

    def delete_exchange(self, name: str, if_unused: bool) -> None:
        """``exchange.delete``: nothing if it does not exist; 403 for system exchanges,
        406 ``if_unused``."""
        if name in SYSTEM_EXCHANGES:
            raise Fault(errors.ACCESS_REFUSED,
                        f"deletion of system exchange '{name}' {self._in()} not allowed")
        if name == "":
            self.exchange(name)
        found = self.exchanges.get(name)
        if found is None:
            return
        if if_unused and found.bindings:
            raise Fault(errors.PRECONDITION_FAILED, f"exchange '{name}' {self._in()} in use")
        self._remove_exchange(found)

    def _remove_exchange(self, exchange: Exchange) -> None:
        self.exchanges.pop(exchange.name, None)
        exchange.bindings.clear()
        for other in list(self.exchanges.values()):
            self._drop_bindings(other, lambda b: b.destination_type == "exchange"
                                and b.destination == exchange.name)

    # -- bindings ----------------------------------------------------------------------------

    def bind(self, binding: Binding) -> None:
        """Add a binding (once); 404 for a missing source exchange."""
        source = self.exchange(binding.source)
        binding = dataclasses.replace(binding, arguments=dict(binding.arguments))
        if source.type == "headers":
            mode = binding.arguments.get("x-match", "all")
            if mode not in ("all", "any", "all-with-x", "any-with-x"):
                raise Fault(errors.PRECONDITION_FAILED,
                            f"Invalid x-match field value {mode!r}; expected all, any, "
                            "all-with-x, or any-with-x")
        if binding not in source.bindings:
            source.bindings.append(binding)

    def unbind(self, binding: Binding) -> None:
        """Remove a binding if it exists (an auto-delete source may go with it)."""
        source = self.exchanges.get(binding.source)
        if source is None:
            return
        binding = dataclasses.replace(binding, arguments=dict(binding.arguments))
        self._drop_bindings(source, lambda b: b == binding)

    def _drop_bindings(self, source: Exchange, which: Any) -> None:
        before = len(source.bindings)
        source.bindings[:] = [b for b in source.bindings if not which(b)]
        if source.auto_delete and before and not source.bindings:
            self._remove_exchange(source)

    def bindings(self) -> list[Binding]:
        """Every binding, by source exchange."""
        return [b for x in self.exchanges.values() for b in x.bindings]

    # -- queues ------------------------------------------------------------------------------

    def queue(self, name: str, conn: object) -> Queue:
        """The queue ``name`` for a request of ``conn`` (404 or 405 otherwise)."""
        found = self.queues.get(name)
        if found is None:
            raise Fault(_NOT_FOUND, f"no queue '{name}' {self._in()}")
        if found.owner is not None and found.owner is not conn:
            raise self._locked(name)
        return found

    def _locked(self, name: str) -> Fault:
        return Fault(errors.RESOURCE_LOCKED,
                     f"cannot obtain exclusive access to locked queue '{name}' {self._in()}. "
                     "It could be originally declared on another connection or the exclusive "
                     "property value does not match that of the original declaration.")

    def declare_queue(self, conn: object, name: str, *, passive: bool, durable: bool,
                      exclusive: bool, auto_delete: bool,
                      arguments: Mapping[str, Any]) -> Queue:
        """``queue.declare`` for ``conn`` with RabbitMQ's checks (403, 405, 406); returns
        the queue."""
        if passive:
            return self.queue(name, conn)
        if name == "":
            name = server_name("amq.gen-")
        elif name.startswith("amq."):
            raise Fault(errors.ACCESS_REFUSED,
                        f"queue name '{name}' contains reserved prefix 'amq.*'")
        owner = conn if exclusive else None
        found = self.queues.get(name)
        if found is not None:
            if found.owner is not owner:
                raise self._locked(name)
            what = f"for queue '{name}' {self._in()}"
            for field, have, want in (("durable", found.durable, durable),
                                      ("auto_delete", found.auto_delete, auto_delete)):
                if have != want:
                    raise Fault(errors.PRECONDITION_FAILED,
                                f"inequivalent arg '{field}' {what}: received {_fmt(want)} "
                                f"but current is {_fmt(have)}")
            _same_args(found.arguments, arguments, _QUEUE_ARGS, what)
            found.touch()
            return found
        self._check_queue_args(name, arguments)
        queue = Queue(self, name, durable=durable, auto_delete=auto_delete, owner=owner,
                      arguments=arguments)
        self.queues[name] = queue
        return queue

    def _check_queue_args(self, name: str, args: Mapping[str, Any]) -> None:
        def invalid(key: str, why: str) -> Fault:
            return Fault(errors.PRECONDITION_FAILED,
                         f"invalid arg '{key}' for queue '{name}' {self._in()}: {why}")

        for key, low in (("x-message-ttl", 0), ("x-expires", 1), ("x-max-length", 0),
                         ("x-max-length-bytes", 0)):
            if key in args:
                value = args[key]
                if type(value) is not int:
                    raise invalid(key, f'"expected integer, got {_type_name(value)}"')
                if value < low:
                    raise invalid(key, f"{{value_negative,{value}}}" if value < 0
                                  else f"{{value_zero,{value}}}")
        if "x-overflow" in args and args["x-overflow"] not in _OVERFLOW:
            raise invalid("x-overflow", "invalid_overflow")
        for key in ("x-dead-letter-exchange", "x-dead-letter-routing-key"):
            if key in args and type(args[key]) is not str:
                raise invalid(key, f"{{unacceptable_type,{_type_name(args[key])}}}")
        if "x-dead-letter-routing-key" in args and "x-dead-letter-exchange" not in args:
            raise invalid("x-dead-letter-routing-key", "routing_key_but_no_dlx_defined")
        kind = args.get("x-queue-type", "classic")
        if kind != "classic":
            raise not_implemented(f"queues of type '{kind}' (only classic queues)")
        for key in ("x-max-priority", "x-single-active-consumer", "x-delivery-limit"):
            if args.get(key) not in (None, False):
                raise not_implemented(f"the queue argument '{key}'")

    def delete_queue(self, queue: Queue) -> int:
        """Delete ``queue`` now: its bindings go, its consumers are cancelled."""
        if queue.deleted:
            return 0
        count = len(queue.ready)
        self.queues.pop(queue.name, None)
        for exchange in list(self.exchanges.values()):
            self._drop_bindings(exchange, lambda b: b.destination_type == "queue"
                                and b.destination == queue.name)
        for consumer in queue.close():
            consumer.cancel_by_broker()
        return count

    def connection_closed(self, conn: object) -> None:
        """Delete the exclusive queues of ``conn``."""
        for queue in [q for q in self.queues.values() if q.owner is conn]:
            self.delete_queue(queue)

    # -- routing -----------------------------------------------------------------------------

    def route(self, exchange: str, keys: tuple[str, ...],
              headers: Mapping[str, Any]) -> list[Queue]:
        """The queues a message published to ``exchange`` with ``keys`` reaches (each once)."""
        if exchange == "":
            return [self.queues[k] for k in dict.fromkeys(keys) if k in self.queues]
        found: dict[str, Queue] = {}
        self._route(self.exchanges[exchange], keys, headers, found, set())
        return list(found.values())

    def _route(self, exchange: Exchange, keys: tuple[str, ...], headers: Mapping[str, Any],
               found: dict[str, Queue], seen: set[str]) -> None:
        seen.add(exchange.name)
        before = len(found)
        for binding in exchange.bindings:
            if not exchange.matches(binding, keys, headers):
                continue
            if binding.destination_type == "queue":
                queue = self.queues.get(binding.destination)
                if queue is not None:
                    found.setdefault(queue.name, queue)
            elif binding.destination not in seen and binding.destination in self.exchanges:
                self._route(self.exchanges[binding.destination], keys, headers, found, seen)
        alternate = exchange.arguments.get("alternate-exchange")
        if (len(found) == before and isinstance(alternate, str) and alternate not in seen
                and alternate in self.exchanges):
            self._route(self.exchanges[alternate], keys, headers, found, seen)

    def publish(self, exchange: str, routing_key: str, properties: BasicProperties,
                body: bytes) -> tuple[bool, bool]:
        """Route and enqueue a published message: (routed anywhere, refused by a full
        ``reject-publish`` queue). Raises `Fault` for a missing or internal exchange."""
        if exchange:
            target = self.exchanges.get(exchange)
            if target is None:
                raise Fault(_NOT_FOUND, f"no exchange '{exchange}' {self._in()}")
            if target.internal:
                raise Fault(errors.ACCESS_REFUSED,
                            f"cannot publish to internal exchange '{exchange}' {self._in()}")
        headers = dict(properties.headers or {})
        keys = [routing_key]
        for name in ("CC", "BCC"):
            extra = headers.get(name)
            if isinstance(extra, list):
                keys.extend(k for k in extra if isinstance(k, str))
        if "BCC" in headers:
            del headers["BCC"]
            properties = dataclasses.replace(properties, headers=headers)
        ttl = _expiration(properties)
        message = BrokerMessage(body, properties, exchange, routing_key)
        queues = self.route(exchange, tuple(keys), headers)
        rejected = False
        for queue in queues:
            if queue.would_reject(len(body)):
                rejected = True
                if queue.overflow == "reject-publish-dlx":
                    self.dead_letter(queue, queue.new_entry(message, tuple(keys), ttl), "maxlen")
                continue
            queue.enqueue(queue.new_entry(message, tuple(keys), ttl))
        return bool(queues), rejected

    # -- dead letters ------------------------------------------------------------------------

    def dead_letter(self, queue: Queue, entry: Entry, reason: str) -> None:
        """``entry`` died in ``queue`` (``rejected``, ``expired``, ``maxlen``): republish it
        to the queue's dead-letter exchange with an ``x-death`` record, or drop it."""
        dlx = queue.dead_letter_exchange
        if dlx is None or (dlx and dlx not in self.exchanges):
            return
        old = entry.message
        headers = dict(old.properties.headers or {})
        deaths = [dict(d) for d in headers.get("x-death") or [] if isinstance(d, Mapping)]
        for index, death in enumerate(deaths):
            if death.get("queue") == queue.name and death.get("reason") == reason:
                death["count"] = int(death.get("count", 0)) + 1
                deaths.insert(0, deaths.pop(index))
                break
        else:
            death = {"count": 1, "reason": reason, "queue": queue.name,
                     "time": datetime.fromtimestamp(int(self.now()), UTC),
                     "exchange": old.exchange, "routing-keys": list(entry.routing_keys)}
            if old.properties.expiration is not None:
                death["original-expiration"] = old.properties.expiration
            deaths.insert(0, death)
        headers["x-death"] = deaths
        headers.setdefault("x-first-death-exchange", old.exchange)
        headers.setdefault("x-first-death-queue", queue.name)
        headers.setdefault("x-first-death-reason", reason)
        properties = dataclasses.replace(old.properties, headers=headers, expiration=None)
        key = queue.dead_letter_routing_key
        keys = (key,) if key is not None else entry.routing_keys
        message = BrokerMessage(old.body, properties, dlx, keys[0])
        for target in self.route(dlx, keys, headers):
            if _is_cycle(target.name, deaths):
                continue  # a cycle that no client breaks: RabbitMQ drops the message
            if target.would_reject(len(old.body)):
                continue
            target.enqueue(target.new_entry(message, keys, None))


def _is_cycle(queue: str, deaths: list[dict[str, Any]]) -> bool:
    """Whether dead-lettering to ``queue`` closes a loop with no rejection in it (the
    deaths since the message last died in ``queue``, most recent first)."""
    for death in deaths:
        if death.get("reason") == "rejected":
            return False
        if death.get("queue") == queue:
            return True
    return False


def _expiration(properties: BasicProperties) -> int | None:
    """A message's own TTL in ms, or None; a malformed one is refused (406)."""
    value = properties.expiration
    if value is None:
        return None
    if not value.isdigit():
        why = "no_integer" if not value.lstrip("-").isdigit() else f"{{value_negative,{value}}}"
        raise Fault(errors.PRECONDITION_FAILED, f"invalid expiration '{value}': {why}")
    return int(value)


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return f"'{str(value).lower()}'"
    return f"'{value}'"


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "signedint" if -2**31 <= value < 2**31 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "longstr"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "table"
    return type(value).__name__


def _same_args(have: Mapping[str, Any], want: Mapping[str, Any], keys: tuple[str, ...],
               what: str) -> None:
    for key in keys:
        old, new = have.get(key), want.get(key)
        if old == new and type(old) is type(new):
            continue
        received = "none" if new is None else f"the value '{new}' of type '{_type_name(new)}'"
        current = "none" if old is None else f"the value '{old}' of type '{_type_name(old)}'"
        raise Fault(errors.PRECONDITION_FAILED,
                    f"inequivalent arg '{key}' {what}: received {received} but current is "
                    f"{current}")
