"""Every channel method as a request: built once here, for every adapter.

`Requests` turns the arguments of a channel method (named as in pika 1.x:
``exchange_type``, ``auto_ack``, ``arguments``) into the AMQP method of the connection's
dialect, with the defaults and refusals every adapter shares: a server-named queue is
exclusive and auto-delete unless asked otherwise, and what AMQP 0-8 lacks (exchange
bindings, publisher confirms, consumer arguments) is refused with
`txpika.errors.UsageError`, raised when the request is made.
Each result is a `Request` whose type parameter is the reply class, so an adapter's
``_call(request)`` is typed with it: ``Deferred[spec.Queue.DeclareOk]``, or the reply
itself in the blocking adapter. On a 0-8 connection the replies are the classes of
`txpika.spec_0_8` with the same names and fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from txpika import spec
from txpika._specbase import Dialect, Method
from txpika.errors import UsageError

__all__ = ["Request", "Requests"]

T = TypeVar("T")

_Args = Mapping[str, Any] | None


class Request(Generic[T]):
    """A method to send on a channel; ``T`` is the type of its reply. A request the
    dialect cannot make carries the `UsageError` to raise instead (``refused``)."""

    __slots__ = ("method", "refused")

    def __init__(self, method: Method | None, refused: UsageError | None = None) -> None:
        self.method = method
        self.refused = refused

    def __repr__(self) -> str:
        return f"<Request {self.method.NAME if self.method else self.refused}>"


class Requests:
    """The requests of one dialect."""

    __slots__ = ("_m", "dialect", "extensions")

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.extensions = dialect.extensions
        self._m = dialect.module

    def _refused(self, what: str) -> Request[Any]:
        return Request(None, UsageError(f"{what} do not exist in AMQP 0-8"))

    # -- exchanges ----------------------------------------------------------------------------

    def exchange_declare(self, exchange: str, exchange_type: str, passive: bool,
                         durable: bool, auto_delete: bool, internal: bool,
                         arguments: _Args) -> Request[spec.Exchange.DeclareOk]:
        return Request(self._m.Exchange.Declare(0, exchange, exchange_type, passive, durable,
                                                auto_delete, internal, False, arguments))

    def exchange_delete(self, exchange: str, if_unused: bool
                        ) -> Request[spec.Exchange.DeleteOk]:
        return Request(self._m.Exchange.Delete(0, exchange, if_unused, False))

    def exchange_bind(self, destination: str, source: str, routing_key: str,
                      arguments: _Args) -> Request[spec.Exchange.BindOk]:
        if not self.extensions:
            return self._refused("exchange bindings")
        return Request(self._m.Exchange.Bind(0, destination, source, routing_key, False,
                                             arguments))

    def exchange_unbind(self, destination: str, source: str, routing_key: str,
                        arguments: _Args) -> Request[spec.Exchange.UnbindOk]:
        if not self.extensions:
            return self._refused("exchange bindings")
        return Request(self._m.Exchange.Unbind(0, destination, source, routing_key, False,
                                               arguments))

    # -- queues -------------------------------------------------------------------------------

    def queue_declare(self, queue: str, passive: bool, durable: bool,
                      exclusive: bool | None, auto_delete: bool | None,
                      arguments: _Args) -> Request[spec.Queue.DeclareOk]:
        """A server-named queue (``queue=""``) defaults to exclusive and auto-delete; a
        named one to neither."""
        if exclusive is None:
            exclusive = not queue
        if auto_delete is None:
            auto_delete = not queue
        return Request(self._m.Queue.Declare(0, queue, passive, durable, exclusive,
                                             auto_delete, False, arguments))

    def queue_bind(self, queue: str, exchange: str, routing_key: str,
                   arguments: _Args) -> Request[spec.Queue.BindOk]:
        return Request(self._m.Queue.Bind(0, queue, exchange, routing_key, False, arguments))

    def queue_unbind(self, queue: str, exchange: str, routing_key: str,
                     arguments: _Args) -> Request[spec.Queue.UnbindOk]:
        return Request(self._m.Queue.Unbind(0, queue, exchange, routing_key, arguments))

    def queue_purge(self, queue: str) -> Request[spec.Queue.PurgeOk]:
        return Request(self._m.Queue.Purge(0, queue, False))

    def queue_delete(self, queue: str, if_unused: bool, if_empty: bool
                     ) -> Request[spec.Queue.DeleteOk]:
        return Request(self._m.Queue.Delete(0, queue, if_unused, if_empty, False))

    # -- basic --------------------------------------------------------------------------------

    def basic_qos(self, prefetch_count: int, prefetch_size: int, global_qos: bool
                  ) -> Request[spec.Basic.QosOk]:
        return Request(self._m.Basic.Qos(prefetch_size, prefetch_count, global_qos))

    def basic_consume(self, queue: str, consumer_tag: str | None, auto_ack: bool,
                      exclusive: bool, arguments: _Args) -> Request[spec.Basic.ConsumeOk]:
        tag = consumer_tag or ""
        if self.extensions:
            return Request(self._m.Basic.Consume(0, queue, tag, False, auto_ack, exclusive,
                                                 False, arguments))
        if arguments:
            return Request(None, UsageError("basic.consume has no arguments in AMQP 0-8"))
        return Request(self._m.Basic.Consume(0, queue, tag, False, auto_ack, exclusive,
                                             False))

    def basic_cancel(self, consumer_tag: str) -> Request[spec.Basic.CancelOk]:
        return Request(self._m.Basic.Cancel(consumer_tag, False))

    def basic_get(self, queue: str, auto_ack: bool) -> Request[Any]:
        """The reply is a message or ``None`` (``basic.get-empty``), as the channel book
        makes it."""
        return Request(self._m.Basic.Get(0, queue, auto_ack))

    def basic_recover(self, requeue: bool) -> Request[spec.Basic.RecoverOk]:
        return Request(self._m.Basic.Recover(requeue))

    def confirm_select(self) -> Request[spec.Confirm.SelectOk]:
        if not self.extensions:
            return self._refused("publisher confirms")
        return Request(self._m.Confirm.Select(False))

    def tx_select(self) -> Request[spec.Tx.SelectOk]:
        return Request(self._m.Tx.Select())

    def tx_commit(self) -> Request[spec.Tx.CommitOk]:
        return Request(self._m.Tx.Commit())

    def tx_rollback(self) -> Request[spec.Tx.RollbackOk]:
        return Request(self._m.Tx.Rollback())

    def flow(self, active: bool) -> Request[spec.Channel.FlowOk]:
        return Request(self._m.Channel.Flow(active))
