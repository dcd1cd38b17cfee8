"""Content both ways: assembling what arrives, and encoding publishes fast.

Assembly: a method with content, its header frame, then its body frames.

`Content` collects the frames of one message on one channel as they arrive. The usual case,
a header and a body that arrived together, never gets here: the core takes both in one go
from the frame decoder (``FrameDecoder.next_content``). What does get here is checked: a
header of the method's class first, then body frames adding up to exactly the size the
header announced. Anything else raises `ContentError` with the text for the 505
UNEXPECTED_FRAME the core closes the connection with.

A large body arrives as pieces (``memoryview`` slices of what was received, see
`txpika.frames`); they are joined once, into the message's ``bytes``.

Encoding: `PublishEncoder` turns a publish into frames, reusing the encoded method frame
of a recent (channel, exchange, routing key, flags) and the encoded properties when they
are the same as last time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from txpika._specbase import Dialect, Method, Properties
from txpika.errors import UsageError
from txpika.frames import BodyFrame, HeaderFrame, encode_method, encoded_content_frames

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "Content", "ContentError", "ContentTooLargeError",
           "PublishEncoder"]

#: The largest message body a connection accepts unless told otherwise: 128 MiB.
DEFAULT_MAX_MESSAGE_SIZE = 128 * 1024 * 1024


class ContentError(Exception):
    """Frames that do not make a message; the text says what arrived instead."""


class ContentTooLargeError(ContentError):
    """A content header announced a body larger than the channel's ``max_message_size``."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class Content:
    """The message being assembled on one channel after ``method``; ``limit`` is the
    largest body it accepts (0: any)."""

    __slots__ = ("limit", "method", "parts", "properties", "received", "size")

    def __init__(self, method: Method, limit: int = 0) -> None:
        self.method = method
        self.limit = limit
        self.properties: Properties | None = None
        self.size = 0
        self.received = 0
        self.parts: list[bytes | memoryview] = []

    def frame(self, frame: object, channel: int) -> bytes | None:
        """Take the next frame; returns the whole body once it is in, else ``None``.

        Raises `ContentError` for a frame that does not belong here, and
        `ContentTooLargeError` for a header that announces more than ``limit``.
        """
        method = self.method
        if self.properties is None:
            if not isinstance(frame, HeaderFrame):
                raise ContentError(f"expected a content header for {method.NAME} on "
                                   f"channel {channel}")
            if frame.class_id != method.CLASS_ID:
                raise ContentError(f"content header of class {frame.class_id} after "
                                   f"{method.NAME}")
            if self.limit and frame.body_size > self.limit:
                raise ContentTooLargeError(frame.body_size)
            self.properties = frame.properties
            self.size = frame.body_size
            return b"" if frame.body_size == 0 else None
        if not isinstance(frame, BodyFrame):
            raise ContentError(f"expected a body frame for {method.NAME} on channel "
                               f"{channel}")
        payload = frame.payload
        received = self.received + len(payload)
        if received == self.size and not self.parts:
            # The whole body in one frame, the usual case (a memoryview: one piece of a large
            # frame streamed by the decoder, see txpika.frames).
            return payload if payload.__class__ is bytes else bytes(payload)
        if received > self.size:
            raise ContentError(f"body of {method.NAME} exceeds the {self.size} bytes its "
                               "header announced")
        self.parts.append(payload)
        self.received = received
        if received == self.size:
            body = b"".join(self.parts)
            self.parts = []
            return body
        return None


class PublishEncoder:
    """The frames of ``basic.publish`` with content, for one connection."""

    __slots__ = ("_dialect_name", "_empty", "_last_payload", "_last_properties",
                 "_method_frames", "_properties_cls", "_publish_cls", "frame_max")

    def __init__(self, dialect: Dialect) -> None:
        self.frame_max = 0  # set once the connection is tuned
        self._dialect_name = dialect.name
        self._properties_cls = dialect.properties[60]
        self._publish_cls: Callable[..., Method] = dialect.module.Basic.Publish
        self._method_frames: dict[tuple[int, str, str, bool, bool], bytes] = {}
        self._empty = self._properties_cls().encode()
        self._last_properties: object = None
        self._last_payload = b""

    def encode(self, channel: int, exchange: str, routing_key: str,
               body: bytes | bytearray | memoryview, properties: Properties | None,
               mandatory: bool, immediate: bool) -> list[bytes | memoryview]:
        """The frames; a body over one frame comes as memoryview pieces of ``body``.
        Raises `UsageError` for a field the codec cannot encode."""
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise UsageError(f"a message body must be bytes, not {type(body).__name__}")
        # Encoded properties are reused: always for none, and for the same object published
        # again when it holds nothing mutable (properties are frozen; headers is a dict).
        if properties is None:
            payload = self._empty
        elif properties is self._last_properties:
            payload = self._last_payload
        else:
            given = properties
            if type(properties) is not self._properties_cls:
                properties = self._own_properties(properties)
            payload = properties.encode()
            if properties.headers is None:  # type: ignore[attr-defined]
                self._last_properties = given
                self._last_payload = payload
        key = (channel, exchange, routing_key, mandatory, immediate)
        method_frame = self._method_frames.get(key)
        if method_frame is None:
            method = self._publish_cls(0, exchange, routing_key, mandatory, immediate)
            method_frame = encode_method(channel, method, self.frame_max)
            if len(self._method_frames) >= 256:
                self._method_frames.clear()
            self._method_frames[key] = method_frame
        return encoded_content_frames(channel, method_frame, 60, payload, body,
                                      self.frame_max)

    def _own_properties(self, properties: Any) -> Properties:
        """The other dialect's BasicProperties (same 14 fields) as this dialect's."""
        cls = self._properties_cls
        if not isinstance(properties, Properties) or properties.CLASS_ID != 60:
            raise UsageError(f"properties must be BasicProperties, not "
                             f"{type(properties).__name__}")
        names: tuple[str, ...] = properties.__slots__
        fields = {name: getattr(properties, name) for name in names}
        try:
            return cls(**fields)
        except TypeError:
            raise UsageError(f"properties must be {self._dialect_name} BasicProperties"
                             ) from None
