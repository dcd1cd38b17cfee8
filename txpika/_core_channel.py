"""One channel inside the sans-IO core: its state, its requests, and the frames it receives.

`CoreChannel` is the core's record of a channel. Requests: only one synchronous method is
on the wire at a time (`request` queues the rest, `_send_queued` writes the next as replies
arrive). Frames received on the channel go to `receive`: the reply the channel awaits,
methods the broker may send unasked (`txpika._states.CHANNEL_RECEIVES`), and the frames of
content, assembled by `txpika._content.Content`. It emits events into the connection's
queue and writes through the connection; a frame that breaks the protocol goes to the
connection's ``fail``, which closes the connection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from txpika import events as ev
from txpika import spec
from txpika._confirms import ConfirmBook
from txpika._content import Content, ContentError, ContentTooLargeError
from txpika._specbase import Dialect, Method, Properties
from txpika._states import (
    CHANNEL_RECEIVES,
    REPLY_STATES,
    ChannelState,
    for_dialect,
)
from txpika._tags import TagSet
from txpika.errors import (
    COMMAND_INVALID,
    CONTENT_TOO_LARGE,
    REPLY_SUCCESS,
    UNEXPECTED_FRAME,
    ChannelClosedByClient,
    MessageTooLarge,
    UsageError,
    channel_error,
)
from txpika.events import _message_received
from txpika.frames import FrameDecoder, MethodFrame, encode_method

__all__ = ["CoreChannel", "method_name", "unexpected_text"]

_OPENING = ChannelState.OPENING
_OPEN = ChannelState.OPEN
_CLOSING = ChannelState.CLOSING
_CLOSED = ChannelState.CLOSED

#: ``fail(reply_code, reply_text, class_id, method_id)``: the peer broke the protocol.
Fail = Callable[[int, str, int, int], None]


def unexpected_text(method: Method, where: str) -> str:
    """The reply text for a method that may not arrive where it did."""
    if not method.CLIENT_RECEIVES:
        return f"the broker sent {method.NAME}, which only a client may send"
    return f"unexpected {method.NAME} {where}"


def method_name(dialect: Dialect, class_id: int, method_id: int) -> str | None:
    """The AMQP name of a method by its ids (as a close names the method that failed)."""
    cls = dialect.methods.get(class_id << 16 | method_id)
    return cls.NAME if cls is not None else None


def _expects_reply(method: Method) -> bool:
    return method.SYNCHRONOUS and not getattr(method, "nowait", False)


class CoreChannel:
    """The core's book-keeping for one channel."""

    __slots__ = (
        "_decoder",
        "_deliver",
        "_dialect",
        "_events",
        "_fail",
        "_handlers",
        "_reply_states",
        "_write",
        "awaiting",
        "close_error",
        "confirms",
        "consumers",
        "content",
        "flow_active",
        "frame_max",
        "get_no_ack",
        "id",
        "max_message_size",
        "queue",
        "reported",
        "state",
        "unacked",
    )

    def __init__(self, channel_id: int, dialect: Dialect, frame_max: int,
                 events: deque[ev.Event], write: Callable[[bytes], None], fail: Fail,
                 decoder: FrameDecoder, max_message_size: int = 0) -> None:
        self.id = channel_id
        self.max_message_size = max_message_size  # 0: no limit
        self.close_error: BaseException | None = None  # what a close-ok reports
        self.state = _OPENING
        self.frame_max = frame_max
        self._dialect = dialect
        self._events = events
        self._write = write
        self._fail = fail
        self._decoder = decoder
        self._handlers, self._reply_states = _tables_for(dialect)
        self._deliver: type[Method] = dialect.module.Basic.Deliver
        self.awaiting: Method | None = None
        self.queue: deque[Method] = deque()
        self.flow_active = True
        self.confirms: ConfirmBook | None = None  # set by confirm.select
        self.unacked = TagSet()
        self.consumers: dict[str, bool] = {}  # consumer tag -> no_ack
        self.get_no_ack: deque[bool] = deque()
        self.content: Content | None = None
        self.reported = False  # a ChannelClosed event was emitted

    # -- requests ---------------------------------------------------------------------------

    def request(self, method: Method) -> None:
        """Send a synchronous method now, or queue it behind the one awaiting its reply."""
        if self.awaiting is not None or self.queue:
            self.queue.append(method)
            return
        self.send(method)
        if _expects_reply(method):
            self.awaiting = method

    def send(self, method: Method) -> None:
        """Write ``method`` and note what it changes on the channel."""
        self._write(encode_method(self.id, method, self.frame_max))
        name = method.NAME
        if name == "confirm.select":
            if self.confirms is None:
                self.confirms = ConfirmBook()
        elif name == "basic.get":
            self.get_no_ack.append(bool(getattr(method, "no_ack", False)))
        elif name == "basic.consume" and getattr(method, "nowait", False):
            tag = getattr(method, "consumer_tag", "")
            self.consumers[tag] = bool(getattr(method, "no_ack", False))
        elif name in ("basic.recover", "basic.recover-async"):
            self.unacked = TagSet()  # the broker redelivers them under new tags

    def _send_queued(self) -> None:
        while self.queue and self.state is _OPEN:
            method = self.queue.popleft()
            self.send(method)
            if _expects_reply(method):
                self.awaiting = method
                return

    def settle(self, tag: int, multiple: bool, name: str) -> None:
        """Forget deliveries an ack, nack or reject settles; raises `UsageError` (nothing
        to send) if none awaits one."""
        if self.state is not _OPEN:
            raise UsageError(f"channel {self.id} is still opening")
        if multiple:
            settled = self.unacked.pop_through(tag) if tag else self.unacked.pop_all()
            if not settled:
                raise UsageError(f"{name} multiple up to {tag}: no delivery awaits an ack")
        elif not self.unacked.discard(tag):
            raise UsageError(
                f"{name} of delivery {tag} on channel {self.id}: it does not await an ack "
                "(already settled, consumed with auto_ack, or never delivered)"
            )

    def start_closing(self, reply_code: int, reply_text: str) -> None:
        """Write ``channel.close``; requests still waiting are dropped. Raises `UsageError`
        (the channel unchanged) if the reply cannot be encoded."""
        m = self._dialect.module
        frame = encode_method(self.id, m.Channel.Close(reply_code, reply_text, 0, 0))
        self.queue.clear()
        self.awaiting = None
        self.state = _CLOSING
        self._write(frame)

    # -- frames from the broker -------------------------------------------------------------

    def receive(self, frame: Any) -> None:
        """A frame for this channel. Leaves `state` CLOSED once the channel is gone."""
        state = self.state
        if (state is _OPEN and frame.__class__ is MethodFrame and self.content is None
                and frame.method.__class__ is self._deliver):
            # The commonest frame, a delivery on an open channel, without the general
            # checks below: it is what the table says, (OPEN, basic.deliver) -> content.
            self._start_content(frame.method)
            return
        if state is _CLOSING:
            self._receive_closing(frame)
            return
        if self.content is not None:
            self._content_frame(frame)
            return
        if frame.__class__ is not MethodFrame:
            self._fail(UNEXPECTED_FRAME, f"content frame on channel {self.id} without a "
                       "method", 0, 0)
            return
        method = frame.method
        if method.CLASS_ID == 10 or not method.CLIENT_RECEIVES:
            self._unexpected(method, f"on channel {self.id}")
            return
        awaiting = self.awaiting
        if awaiting is not None and type(method) in awaiting.REPLIES:
            self._on_reply(awaiting, method)
            return
        entry = self._handlers.get((state, type(method)))
        if entry is None:
            self._unexpected(method, f"on channel {self.id} in state {state.value}")
            return
        handler, self.state = entry
        handler(self, method)

    def _unexpected(self, method: Method, where: str) -> None:
        self._fail(COMMAND_INVALID, unexpected_text(method, where), method.CLASS_ID,
                   method.METHOD_ID)

    def _on_reply(self, request: Method, reply: Any) -> None:
        self.awaiting = None
        name = reply.NAME
        self.state = self._reply_states.get((self.state, type(reply)), self.state)
        if name == "channel.open-ok":
            self._events.append(ev.ChannelOpened(channel=self.id))
        elif name == "basic.get-ok":
            self._start_content(reply)
            return  # the reply is reported, and the queue moves, when the body is in
        else:
            if name == "basic.consume-ok":
                self.consumers[reply.consumer_tag] = bool(getattr(request, "no_ack", False))
            elif name == "basic.cancel-ok":
                self.consumers.pop(reply.consumer_tag, None)
            elif name == "basic.get-empty" and self.get_no_ack:
                self.get_no_ack.popleft()
            self._events.append(ev.MethodReceived(channel=self.id, method=reply))
        self._send_queued()

    def _on_close(self, method: Any) -> None:
        m = self._dialect.module
        self._write(encode_method(self.id, m.Channel.CloseOk()))
        error = channel_error(method.reply_code, method.reply_text, method.class_id,
                              method.method_id,
                              method_name(self._dialect, method.class_id, method.method_id))
        self._report_closed(error)

    def _report_closed(self, error: BaseException) -> None:
        if not self.reported:
            self.reported = True
            self._events.append(ev.ChannelClosed(channel=self.id, error=error))

    def _on_flow(self, method: Any) -> None:
        self.flow_active = bool(method.active)
        m = self._dialect.module
        self._write(encode_method(self.id, m.Channel.FlowOk(method.active)))
        self._events.append(ev.ChannelFlow(channel=self.id, active=self.flow_active))

    def _on_cancel(self, method: Any) -> None:
        self.consumers.pop(method.consumer_tag, None)
        if not method.nowait:
            m = self._dialect.module
            self._write(encode_method(self.id, m.Basic.CancelOk(method.consumer_tag)))
        self._events.append(ev.MethodReceived(channel=self.id, method=method))

    def _on_confirm(self, method: Any) -> None:
        confirms = self.confirms
        if confirms is None:
            self._unexpected(method, f"on channel {self.id}, which is not in confirm mode")
            return
        tags = confirms.confirmed(method.delivery_tag, method.multiple)
        if tags is None:
            self._unexpected(method, f"for delivery tag {method.delivery_tag}, which was "
                             "not published")
            return
        tags, returned = confirms.take_returned(tags)
        for tag, (ret, props, body) in returned:
            self._events.append(ev.PublishReturned(
                channel=self.id, delivery_tag=tag, method=ret, properties=props, body=body))
        if not tags:
            return
        if method.NAME == "basic.ack":
            self._events.append(ev.PublishAcked(channel=self.id, delivery_tags=tuple(tags)))
        else:
            self._events.append(ev.PublishNacked(channel=self.id, delivery_tags=tuple(tags)))

    def _receive_closing(self, frame: Any) -> None:
        # After channel.close only close-ok and a crossing close matter; the rest is dropped
        # as the specification requires (the broker requeues what it was delivering).
        if frame.__class__ is not MethodFrame:
            return
        entry = self._handlers.get((_CLOSING, type(frame.method)))
        if entry is not None:
            handler, self.state = entry
            handler(self, frame.method)

    def _on_close_ok(self, method: Any) -> None:
        self._report_closed(self.close_error or ChannelClosedByClient(REPLY_SUCCESS, "closed"))

    # -- content ----------------------------------------------------------------------------

    def _start_content(self, method: Method) -> None:
        # The usual case: header and body are here already, taken in one go.
        content = self._decoder.next_content(self.id, method.CLASS_ID)
        if content is None:
            self.content = Content(method, self.max_message_size)
            return
        limit = self.max_message_size
        if limit and len(content[1]) > limit:
            self._too_large(method, len(content[1]))
            return
        self._finish_content(method, content[0], content[1])

    def _too_large(self, method: Method, size: int) -> None:
        # Close the channel before any of the body is kept: the broker requeues the
        # delivery, the body frames still on their way are dropped while closing, and the
        # close-ok reports the error to whatever waited on the channel.
        self.content = None
        if method.NAME == "basic.get-ok" and self.get_no_ack:
            self.get_no_ack.popleft()
        error = MessageTooLarge(size, self.max_message_size, method.NAME, self.id)
        self.start_closing(CONTENT_TOO_LARGE, error.reply_text)
        self.close_error = error

    def _content_frame(self, frame: Any) -> None:
        content = self.content
        assert content is not None
        try:
            body = content.frame(frame, self.id)
        except ContentTooLargeError as exc:
            self._too_large(content.method, exc.size)
            return
        except ContentError as exc:
            self._fail(UNEXPECTED_FRAME, str(exc), 0, 0)
            return
        if body is not None:
            self.content = None
            assert content.properties is not None
            self._finish_content(content.method, content.properties, body)

    def _finish_content(self, method: Any, props: Properties, body: bytes) -> None:
        name = method.NAME
        if name == "basic.deliver" or name == "basic.get-ok":
            if name == "basic.deliver":
                no_ack = self.consumers.get(method.consumer_tag, False)
            else:
                no_ack = self.get_no_ack.popleft() if self.get_no_ack else False
            if not no_ack:
                try:
                    self.unacked.add(method.delivery_tag)
                except ValueError:  # the broker reused or went back on a delivery tag
                    self._fail(COMMAND_INVALID, f"{name} with delivery tag "
                               f"{method.delivery_tag}, not above an earlier one on channel "
                               f"{self.id}", method.CLASS_ID, method.METHOD_ID)
                    return
        elif (name == "basic.return" and self.confirms is not None
              and self.confirms.match_return(method, props, body)):
            return
        self._events.append(_message_received(self.id, method, props, body))
        if name == "basic.get-ok":
            self._send_queued()


_Handler = Callable[[CoreChannel, Any], None]
_Entry = tuple[_Handler, ChannelState]

#: The handler of each method of `txpika._states.CHANNEL_RECEIVES`.
_HANDLERS: dict[type[Method], _Handler] = {
    spec.Channel.Close: CoreChannel._on_close,
    spec.Channel.CloseOk: CoreChannel._on_close_ok,
    spec.Channel.Flow: CoreChannel._on_flow,
    spec.Basic.Cancel: CoreChannel._on_cancel,
    spec.Basic.Deliver: CoreChannel._start_content,
    spec.Basic.Return: CoreChannel._start_content,
    spec.Basic.Ack: CoreChannel._on_confirm,
    spec.Basic.Nack: CoreChannel._on_confirm,
}

_TABLES: dict[str, tuple[dict[tuple[ChannelState, type[Method]], _Entry],
                         dict[tuple[ChannelState, type[Method]], ChannelState]]] = {}


def _tables_for(dialect: Dialect) -> tuple[
    dict[tuple[ChannelState, type[Method]], _Entry],
    dict[tuple[ChannelState, type[Method]], ChannelState],
]:
    """`CHANNEL_RECEIVES` with its handlers, and `REPLY_STATES`, keyed by the method
    classes of ``dialect`` (built once per dialect)."""
    tables = _TABLES.get(dialect.name)
    if tables is None:
        handlers: dict[tuple[ChannelState, type[Method]], _Entry] = {}
        by_name = dialect.module.BY_NAME
        for (state, base), new in CHANNEL_RECEIVES.items():
            own = by_name.get(base.NAME)
            if own is not None:
                handlers[(state, own)] = (_HANDLERS[base], new)
        tables = _TABLES[dialect.name] = (handlers, for_dialect(REPLY_STATES, dialect))
    return tables
