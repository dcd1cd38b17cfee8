"""The connection handshake: client properties, SASL, locale and tuning.

`Handshake` answers the broker's ``connection.start``, ``connection.secure`` and
``connection.tune`` with the frames to send, from what the client wants and what the broker
proposed; a handshake that cannot go on raises `HandshakeFailed` with the error that ends the
connection. The core (`txpika.connection`) writes the frames and moves its state.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from typing import Any, Final

from txpika._specbase import Dialect
from txpika.auth import Credentials
from txpika.errors import AuthenticationError, ProtocolError
from txpika.frames import FRAME_MIN_SIZE, encode_method

__all__ = ["CAPABILITIES", "Handshake", "HandshakeFailed", "Tuning", "choose_locale",
           "client_properties", "lower", "tune"]

#: The capabilities txpika tells the broker it supports (0-9-1).
CAPABILITIES: Final[Mapping[str, bool]] = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}


def client_properties(dialect: Dialect, version: str, extra: Mapping[str, Any] | None,
                      connection_name: str | None) -> dict[str, Any]:
    """The ``client-properties`` table of ``connection.start-ok``."""
    properties: dict[str, Any] = {
        "product": "txpika",
        "version": version,
        "platform": f"Python {platform.python_version()}",
        "information": "https://pypi.org/project/txpika/",
    }
    if dialect.extensions:
        properties["capabilities"] = dict(CAPABILITIES)
    if connection_name:
        properties["connection_name"] = connection_name
    if extra:
        properties.update(extra)
    return properties


def choose_locale(wanted: str, offered: bytes) -> str:
    """``wanted`` if the broker offers it (or offers nothing), else the broker's first."""
    locales = offered.decode("utf-8", "replace").split()
    return wanted if wanted in locales or not locales else locales[0]


def lower(ours: int, theirs: int) -> int:
    """Negotiate a limit where 0 means none: the lower of the limits that are set."""
    if not ours:
        return theirs
    if not theirs:
        return ours
    return min(ours, theirs)


class Tuning:
    """The outcome of ``connection.tune``: the limits in force and what ``tune-ok`` says."""

    __slots__ = ("channel_max", "frame_max", "heartbeat", "tune_ok_channel_max")

    def __init__(self, channel_max: int, tune_ok_channel_max: int, frame_max: int,
                 heartbeat: int) -> None:
        self.channel_max = channel_max
        self.tune_ok_channel_max = tune_ok_channel_max
        self.frame_max = frame_max
        self.heartbeat = heartbeat


def tune(want_channel_max: int, want_frame_max: int, want_heartbeat: int | None,
         proposed_channel_max: int, proposed_frame_max: int,
         proposed_heartbeat: int) -> Tuning:
    """Settle the limits: the lower of ours and the broker's (0 meaning none).

    ``want_heartbeat`` ``None`` takes the broker's proposal and 0 turns heartbeats off.
    The channel limit in ``tune-ok`` is 0 only when neither side has one: a broker that
    proposed 65535 refuses 0.
    """
    if want_heartbeat is None:
        heartbeat = proposed_heartbeat
    elif want_heartbeat == 0:
        heartbeat = 0
    else:
        heartbeat = lower(want_heartbeat, proposed_heartbeat)
    channel_max = lower(want_channel_max, proposed_channel_max)
    return Tuning(channel_max or 65535, channel_max,
                  lower(want_frame_max, proposed_frame_max), heartbeat)


class HandshakeFailed(Exception):
    """The handshake cannot go on; ``error`` is why the connection ends (nothing to send)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class Handshake:
    """What the client answers at each step of the handshake."""

    def __init__(self, dialect: Dialect, credentials: Credentials, virtual_host: str,
                 locale: str, properties: Mapping[str, Any], channel_max: int,
                 frame_max: int, heartbeat: int | None) -> None:
        self._dialect = dialect
        self._m = dialect.module
        self._credentials = credentials
        self._virtual_host = virtual_host
        self._locale = locale
        self._properties = properties
        self._channel_max = channel_max
        self._frame_max = frame_max
        self._heartbeat = heartbeat

    def start_ok(self, start: Any) -> bytes:
        """The ``connection.start-ok`` frame answering ``start``."""
        version = (start.version_major, start.version_minor)
        if version != ((0, 9) if self._dialect.name == "0-9-1" else (8, 0)):
            raise HandshakeFailed(ProtocolError(
                0, f"the broker speaks AMQP {version[0]}-{version[1]}"))
        mechanism = self._credentials.mechanism
        offered = start.mechanisms.decode("utf-8", "replace").split()
        if mechanism not in offered:
            raise HandshakeFailed(AuthenticationError(
                403, f"the broker offers {' '.join(offered) or 'no mechanism'}, "
                f"not {mechanism}"))
        return encode_method(0, self._m.Connection.StartOk(
            self._properties, mechanism, self._credentials.response(),
            choose_locale(self._locale, start.locales)))

    def secure_ok(self, secure: Any) -> bytes:
        """The ``connection.secure-ok`` frame answering a SASL challenge."""
        try:
            response = self._credentials.challenge(secure.challenge)
        except AuthenticationError as exc:
            raise HandshakeFailed(exc) from None
        return encode_method(0, self._m.Connection.SecureOk(response))

    def tune_ok(self, proposed: Any) -> tuple[Tuning, bytes]:
        """The limits in force and the ``tune-ok`` and ``open`` frames answering
        ``connection.tune``."""
        tuned = tune(self._channel_max, self._frame_max, self._heartbeat,
                     proposed.channel_max, proposed.frame_max, proposed.heartbeat)
        if tuned.frame_max and tuned.frame_max < FRAME_MIN_SIZE:
            raise HandshakeFailed(ProtocolError(
                0, f"the broker proposed frame_max {proposed.frame_max}, below the minimum "
                f"{FRAME_MIN_SIZE}"))
        m = self._m
        return tuned, b"".join((
            encode_method(0, m.Connection.TuneOk(tuned.tune_ok_channel_max, tuned.frame_max,
                                                 tuned.heartbeat)),
            encode_method(0, m.Connection.Open(self._virtual_host)),
        ))
