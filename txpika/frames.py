"""AMQP frames: encoding, and a decoder that tells "need more bytes" from "broken bytes".

A frame on the wire is ``type:octet channel:short size:long payload[size] 0xCE``. The
decoder is fed with `FrameDecoder.receive_data` and drained with `FrameDecoder.next_frame`,
which returns a frame, or `NEED_DATA` when the bytes so far do not hold a whole frame. A frame
that can never be valid raises `FrameDecodeError`, a `txpika.errors.ProtocolError` whose
``reply_code`` is what the client must send in ``connection.close``:

* 501 (frame error): unknown frame type, missing frame-end octet, a frame larger than the
  negotiated ``frame_max``, a heartbeat with a payload or on a channel other than 0;
* 502 (syntax error): method or header arguments that are truncated, overlong or not valid;
* 503 (command invalid): an unknown class or method id, or a content header for a class that
  has no content.

The payload of a body frame of more than `STREAM_MIN` bytes is a ``memoryview`` of the
received bytes, so that a large body is copied once, into the message, not once per frame
and again per message. If such a frame has not all arrived yet, it is handed out as it
arrives, in pieces: several `BodyFrame` objects on the same channel whose sizes add up to the
frame's; its end octet is checked after the last piece. Smaller payloads are ``bytes``.

After an error the decoder is broken for good: every later call raises the same error.
Memory is bounded: the decoder never holds more than the bytes it was given, and it rejects
a frame whose header announces more than ``frame_max`` before buffering its payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from struct import Struct
from struct import error as struct_error
from typing import Final

from txpika._specbase import Dialect, Method, Properties
from txpika._wire import EncodeError, WireError
from txpika.errors import (
    COMMAND_INVALID,
    FRAME_ERROR,
    SYNTAX_ERROR,
    ProtocolError,
)

__all__ = [
    "FRAME_BODY",
    "FRAME_END",
    "FRAME_HEADER",
    "FRAME_HEARTBEAT",
    "FRAME_METHOD",
    "FRAME_MIN_SIZE",
    "HEARTBEAT",
    "NEED_DATA",
    "STREAM_MIN",
    "BodyFrame",
    "Frame",
    "FrameDecodeError",
    "FrameDecoder",
    "HeaderFrame",
    "HeartbeatFrame",
    "MethodFrame",
    "content_frames",
    "encode_body",
    "encode_content",
    "encode_header",
    "encode_method",
]

#: Frame type of a method frame.
FRAME_METHOD: Final = 1
#: Frame type of a content header frame.
FRAME_HEADER: Final = 2
#: Frame type of a content body frame.
FRAME_BODY: Final = 3
#: Frame type of a heartbeat frame.
FRAME_HEARTBEAT: Final = 8
#: The octet that ends every frame.
FRAME_END: Final = 0xCE
#: The smallest ``frame_max`` a peer may ask for (AMQP 0-9-1).
FRAME_MIN_SIZE: Final = 4096
#: Frame header (7 octets) and frame end (1 octet).
FRAME_OVERHEAD: Final = 8
#: The largest frame accepted before ``connection.tune`` settles ``frame_max``.
INITIAL_FRAME_MAX: Final = 131072

_FRAME_HEADER = Struct(">BHI")
_IDS = Struct(">I")
_CONTENT_HEADER = Struct(">HHQ")
#: A content header frame up to its properties: frame header, class id, weight, body size.
_HEADER_FRAME = Struct(">BHIHHQ")
#: The end octet of one frame and the header of the body frame that follows it.
_END_BODY_FRAME = Struct(">BBHI")
_END = b"\xce"
#: A body frame larger than this (payload octets) that is not all received yet is handed out
#: in pieces as it arrives (see the module docstring).
STREAM_MIN: Final = 16384
#: A heartbeat frame, encoded.
HEARTBEAT: Final = b"\x08\x00\x00\x00\x00\x00\x00\xce"


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by `FrameDecoder.next_frame` while the buffered bytes hold no whole frame.
NEED_DATA: Final = _NeedData()


class FrameDecodeError(ProtocolError):
    """Bytes that can never form a valid frame; ``reply_code`` is the code to close with."""

    def __init__(self, reply_code: int, text: str, class_id: int = 0, method_id: int = 0):
        super().__init__(reply_code, text, class_id, method_id)


# The three frames the decoder builds by the thousand are plain (not frozen) slotted
# dataclasses: it makes them with object.__new__ and two to four slot stores, where a frozen
# dataclass would cost an object.__setattr__ per field (or a class switch, see
# txpika._specbase). They are records handed out once; nothing in txpika changes them.


@dataclass(slots=True)
class MethodFrame:
    """A method on ``channel``."""

    #: The channel number.
    channel: int
    #: The method it carries.
    method: Method


@dataclass(slots=True)
class HeaderFrame:
    """A content header: the size of the body that follows and its properties."""

    #: The channel number.
    channel: int
    #: The content class (60: ``basic``).
    class_id: int
    #: The size of the whole body, in bytes, across its body frames.
    body_size: int
    #: The content's properties.
    properties: Properties


@dataclass(slots=True)
class BodyFrame:
    """A body frame's payload, or a piece of it (a ``memoryview``) while a large frame is
    still arriving."""

    #: The channel number.
    channel: int
    #: A piece of the body.
    payload: bytes | memoryview


@dataclass(frozen=True, slots=True)
class HeartbeatFrame:
    """A heartbeat (always on channel 0). Frozen: the decoder returns one shared instance."""

    #: Always 0: heartbeats belong to the connection.
    channel: int = 0


#: Any frame the decoder returns.
Frame = MethodFrame | HeaderFrame | BodyFrame | HeartbeatFrame

_new = object.__new__
_HEARTBEAT_FRAME = HeartbeatFrame()


class FrameDecoder:
    """Turns a byte stream into frames of one dialect.

    ``frame_max`` is the largest whole frame accepted (header and end octet included); 0
    means no limit. Set it after ``connection.tune``.
    """

    __slots__ = ("_body_channel", "_body_left", "_buf", "_error", "_extra", "_extra_len",
                 "_method_decoders", "_methods", "_pos", "_properties",
                 "_properties_decoders", "frame_max")

    def __init__(self, dialect: Dialect, frame_max: int = INITIAL_FRAME_MAX) -> None:
        self._methods = dialect.methods
        self._properties = dialect.properties
        # Their decoders, bound once (a classmethod is bound anew at each attribute lookup).
        self._method_decoders = {index: cls.decode for index, cls in dialect.methods.items()}
        self._properties_decoders = {
            class_id: cls.decode for class_id, cls in dialect.properties.items()
        }
        #: The largest frame accepted, in bytes (the negotiated ``frame_max``).
        self.frame_max = frame_max
        self._buf = b""
        self._pos = 0
        self._extra: list[bytes] = []
        self._extra_len = 0
        self._error: FrameDecodeError | None = None
        # While a large body frame is handed out in pieces: the payload octets still to come
        # (0: only its end octet), and its channel. -1 otherwise.
        self._body_left = -1
        self._body_channel = 0

    @property
    def buffered(self) -> int:
        """How many received bytes are not yet decoded."""
        return len(self._buf) - self._pos + self._extra_len

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes from the peer. They are decoded by `next_frame`."""
        if not data:
            return
        if self._pos >= len(self._buf):
            self._buf = data if data.__class__ is bytes else bytes(data)
            self._pos = 0
        else:
            self._extra.append(bytes(data))
            self._extra_len += len(data)

    def next_frame(self) -> Frame | _NeedData:
        """The next whole frame, or `NEED_DATA`.

        Raises `FrameDecodeError` for bytes that can never be a valid frame.
        """
        if self._error is not None:
            raise self._error
        if self._body_left >= 0:
            piece = self._body_piece()
            if piece is not None:
                return piece
        buf = self._buf
        pos = self._pos
        if self._extra:
            # Bytes received in several pieces: go on in the next piece without copying, and
            # join only what one frame needs (a header cut by a piece's end, a small frame).
            if pos >= len(buf):
                buf = self._buf = self._extra.pop(0)
                self._extra_len -= len(buf)
                pos = self._pos = 0
            if len(buf) - pos < 7 and self._extra:
                if len(buf) - pos + self._extra_len < 7:
                    return NEED_DATA
                buf, pos = self._gather(7)
        available = len(buf) - pos
        if available < 7:
            return NEED_DATA
        kind, channel, size = _FRAME_HEADER.unpack_from(buf, pos)
        frame_max = self.frame_max
        if frame_max and size + FRAME_OVERHEAD > frame_max:
            return self._fail(
                FRAME_ERROR, f"frame of {size + FRAME_OVERHEAD} bytes exceeds frame_max {frame_max}"
            )
        start = pos + 7
        end = start + size
        if end >= len(buf):
            if kind == FRAME_BODY and size > STREAM_MIN:
                self._pos = start
                self._body_left = size
                self._body_channel = channel
                return self._body_piece() or NEED_DATA
            if not self._extra or len(buf) - pos + self._extra_len < size + FRAME_OVERHEAD:
                return NEED_DATA
            buf, pos = self._gather(size + FRAME_OVERHEAD)
            start = pos + 7
            end = start + size
        if buf[end] != FRAME_END:
            return self._fail(FRAME_ERROR, f"frame end octet is {buf[end]:#04x}, not 0xce")
        self._pos = end + 1
        # Frames are built without calling their __init__: object.__new__ and slot stores.
        if kind == FRAME_BODY:
            body: BodyFrame = _new(BodyFrame)
            body.channel = channel
            # A large payload stays a view of the received bytes: the core copies it once,
            # into the message body, whether it has one frame or many.
            body.payload = buf[start:end] if size <= STREAM_MIN else memoryview(buf)[start:end]
            return body
        # Methods and headers are decoded in place, from the buffer: a decoder that reads past
        # the frame's end is caught by the check that it ends exactly there.
        if kind == FRAME_METHOD:
            if size < 4:
                return self._fail(SYNTAX_ERROR, f"method frame of {size} bytes has no method id")
            (index,) = _IDS.unpack_from(buf, start)
            decode = self._method_decoders.get(index)
            if decode is None:
                return self._fail(COMMAND_INVALID, f"unknown method {index >> 16}.{index & 0xFFFF}",
                                  index >> 16, index & 0xFFFF)
            try:
                method, offset = decode(buf, start + 4)
            except (WireError, struct_error, IndexError, ValueError) as exc:
                name = self._methods[index].NAME
                return self._fail(SYNTAX_ERROR, f"malformed {name}: {_reason(exc)}",
                                  index >> 16, index & 0xFFFF)
            if offset != end:
                name = self._methods[index].NAME
                why = _overrun("arguments", offset, start, end)
                return self._fail(SYNTAX_ERROR, f"malformed {name}: {why}",
                                  index >> 16, index & 0xFFFF)
            frame: MethodFrame = _new(MethodFrame)
            frame.channel = channel
            frame.method = method
            return frame
        if kind == FRAME_HEADER:
            if size < 14:
                return self._fail(SYNTAX_ERROR, f"content header of {size} bytes is truncated")
            class_id, weight, body_size = _CONTENT_HEADER.unpack_from(buf, start)
            decode_properties = self._properties_decoders.get(class_id)
            if decode_properties is None:
                return self._fail(COMMAND_INVALID,
                                  f"content header for class {class_id}, which has none")
            if weight:
                return self._fail(SYNTAX_ERROR, f"content header weight is {weight}, not 0")
            try:
                properties, offset = decode_properties(buf, start + 12)
            except (WireError, struct_error, IndexError, ValueError) as exc:
                return self._fail(SYNTAX_ERROR, f"malformed content properties: {_reason(exc)}")
            if offset != end:
                why = _overrun("they", offset, start, end)
                return self._fail(SYNTAX_ERROR, f"malformed content properties: {why}")
            header: HeaderFrame = _new(HeaderFrame)
            header.channel = channel
            header.class_id = class_id
            header.body_size = body_size
            header.properties = properties
            return header
        if kind == FRAME_HEARTBEAT:
            if channel or size:
                return self._fail(FRAME_ERROR, "heartbeat frame on a channel or with a payload")
            return _HEARTBEAT_FRAME
        return self._fail(FRAME_ERROR, f"unknown frame type {kind}")

    def next_content(self, channel: int, class_id: int) -> tuple[Properties, bytes] | None:
        """The content header and body that follow a content method on ``channel``, when
        both are already here whole and well-formed: the properties and the body (of at
        most `STREAM_MIN` octets, in one frame), when they lie in the piece of received
        bytes being decoded. Otherwise None, and nothing is consumed: `next_frame` then
        decodes those frames one by one (joining pieces), and reports what is wrong.

        A shortcut for the usual delivery, which takes three frames in one go.
        """
        if self._body_left >= 0 or self._error is not None:
            return None
        buf = self._buf
        pos = self._pos
        end = len(buf)
        if pos >= end and self._extra:  # the method frame ended a piece: go on in the next
            buf = self._buf = self._extra.pop(0)
            self._extra_len -= len(buf)
            pos = self._pos = 0
            end = len(buf)
        if end - pos < 30:  # header frame (22 octets at least) and body frame header
            return None
        kind, chan, size, klass, weight, body_size = _HEADER_FRAME.unpack_from(buf, pos)
        header_end = pos + 7 + size
        if (kind != FRAME_HEADER or chan != channel or klass != class_id or weight
                or size < 14 or header_end >= end or buf[header_end] != FRAME_END
                or body_size > STREAM_MIN or (self.frame_max and size + 8 > self.frame_max)):
            return None
        decode = self._properties_decoders.get(klass)
        if decode is None:
            return None
        try:
            properties, offset = decode(buf, pos + 19)
        except (WireError, struct_error, IndexError, ValueError):
            return None
        if offset != header_end:
            return None
        if not body_size:
            self._pos = header_end + 1
            return properties, b""
        start = header_end + 8
        body_end = start + body_size
        if (body_end >= end or buf[body_end] != FRAME_END
                or (self.frame_max and body_size + 8 > self.frame_max)):
            return None
        kind, chan, size = _FRAME_HEADER.unpack_from(buf, header_end + 1)
        if kind != FRAME_BODY or chan != channel or size != body_size:
            return None
        self._pos = body_end + 1
        return properties, buf[start:body_end]

    def _gather(self, need: int) -> tuple[bytes, int]:
        """Join what is left of the current piece with the next ones until ``need`` octets
        are in one buffer (the caller made sure they have arrived); the rest stays apart."""
        parts = [self._buf[self._pos:]]
        have = len(parts[0])
        extra = self._extra
        while have < need:
            chunk = extra.pop(0)
            self._extra_len -= len(chunk)
            parts.append(chunk)
            have += len(chunk)
        buf = self._buf = b"".join(parts)
        self._pos = 0
        return buf, 0

    def _body_piece(self) -> BodyFrame | _NeedData | None:
        """The next piece of a body frame being streamed, `NEED_DATA`, or None once its end
        octet is checked (decoding goes on with the next frame)."""
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            if not self._extra:
                return NEED_DATA
            buf = self._buf = self._extra.pop(0)
            self._extra_len -= len(buf)
            pos = self._pos = 0
        left = self._body_left
        if left:
            end = min(len(buf), pos + left)
            piece: BodyFrame = _new(BodyFrame)
            piece.channel = self._body_channel
            piece.payload = memoryview(buf)[pos:end]
            self._pos = end
            self._body_left = left - (end - pos)
            return piece
        if buf[pos] != FRAME_END:
            return self._fail(FRAME_ERROR, f"frame end octet is {buf[pos]:#04x}, not 0xce")
        self._pos = pos + 1
        self._body_left = -1
        return None

    def _fail(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> _NeedData:
        self._error = FrameDecodeError(code, text, class_id, method_id)
        raise self._error


def _overrun(what: str, offset: int, start: int, end: int) -> str:
    """Why ``what`` that should end at ``end`` ended at ``offset`` (payload at ``start``)."""
    if offset > end:
        return "truncated"
    return f"{what} end at {offset - start} of {end - start} bytes"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, WireError):
        return exc.reply_text
    if isinstance(exc, (struct_error, IndexError)):
        return "truncated"
    return str(exc)


def encode_method(channel: int, method: Method, frame_max: int = 0) -> bytes:
    """One method frame. Raises `EncodeError` if it would exceed ``frame_max`` (0: no limit)."""
    payload = method.encode()
    if frame_max and len(payload) + FRAME_OVERHEAD > frame_max:
        raise EncodeError(
            f"{method.NAME} frame of {len(payload) + FRAME_OVERHEAD} bytes exceeds frame_max "
            f"{frame_max}"
        )
    return _FRAME_HEADER.pack(FRAME_METHOD, channel, len(payload)) + payload + _END


def encode_header(
    channel: int, body_size: int, properties: Properties, frame_max: int = 0
) -> bytes:
    """One content header frame."""
    payload = properties.encode()
    size = len(payload) + 12
    if frame_max and size + FRAME_OVERHEAD > frame_max:
        raise EncodeError(
            f"content header of {size + FRAME_OVERHEAD} bytes exceeds frame_max {frame_max}"
        )
    return b"".join((
        _HEADER_FRAME.pack(FRAME_HEADER, channel, size, properties.CLASS_ID, 0, body_size),
        payload,
        _END,
    ))


def encode_body(channel: int, payload: bytes | memoryview) -> list[bytes | memoryview]:
    """One body frame, as its header, its payload (not copied) and its end octet."""
    return [_FRAME_HEADER.pack(FRAME_BODY, channel, len(payload)), payload, _END]


def encode_content(
    channel: int,
    method: Method,
    properties: Properties,
    body: bytes | bytearray | memoryview,
    frame_max: int,
) -> list[bytes | memoryview]:
    """A method with content: method frame, header frame and body frames split by frame_max.

    A body that fits one frame comes back as a list of one ``bytes``; a larger one as a list
    whose body pieces are memoryviews of ``body`` (nothing is copied). Raises `EncodeError`
    before producing anything if a frame would exceed ``frame_max`` (0: no limit).
    """
    return content_frames(
        channel, encode_method(channel, method, frame_max), properties, body, frame_max
    )


def content_frames(
    channel: int,
    method_frame: bytes,
    properties: Properties,
    body: bytes | bytearray | memoryview,
    frame_max: int,
) -> list[bytes | memoryview]:
    """Like `encode_content`, from an already encoded method frame."""
    return encoded_content_frames(channel, method_frame, properties.CLASS_ID,
                                  properties.encode(), body, frame_max)


def encoded_content_frames(
    channel: int,
    method_frame: bytes,
    class_id: int,
    payload: bytes,
    body: bytes | bytearray | memoryview,
    frame_max: int,
) -> list[bytes | memoryview]:
    """Like `content_frames`, from already encoded properties (``payload``, of
    ``class_id``)."""
    size = len(body)
    header_size = len(payload) + 12
    if frame_max:
        if header_size + FRAME_OVERHEAD > frame_max:
            raise EncodeError(f"content header of {header_size + FRAME_OVERHEAD} bytes exceeds "
                              f"frame_max {frame_max}")
        chunk = frame_max - FRAME_OVERHEAD
    else:
        chunk = size
    header = _HEADER_FRAME.pack(FRAME_HEADER, channel, header_size, class_id, 0, size)
    if size <= chunk:
        if not size:
            return [b"".join((method_frame, header, payload, _END))]
        # One piece: method frame, header frame, and the body frame after the header's end.
        return [b"".join((method_frame, header, payload,
                          _END_BODY_FRAME.pack(FRAME_END, FRAME_BODY, channel, size), body,
                          _END))]
    view = memoryview(body)
    parts: list[bytes | memoryview] = [b"".join((method_frame, header, payload, _END))]
    for start in range(0, size, chunk):
        piece = view[start:start + chunk]
        parts.append(_FRAME_HEADER.pack(FRAME_BODY, channel, len(piece)))
        parts.append(piece)
        parts.append(_END)
    return parts
