"""SASL mechanisms for ``connection.start-ok``: PLAIN, AMQPLAIN and EXTERNAL.

A credentials object knows its mechanism name and builds the initial response; none of
them shows its password in ``repr`` or ``str``.
"""

from __future__ import annotations

from txpika._wire_encode import encode_table
from txpika.errors import AuthenticationError

__all__ = ["AMQPlainCredentials", "Credentials", "ExternalCredentials", "PlainCredentials"]


class Credentials:
    """Base class: a SASL mechanism and what it sends."""

    __slots__ = ()

    #: The SASL mechanism name sent in ``connection.start-ok``.
    mechanism: str = ""

    def response(self) -> bytes:
        """The initial response sent in ``connection.start-ok``."""
        raise NotImplementedError

    def challenge(self, challenge: bytes) -> bytes:
        """Answer a ``connection.secure`` challenge.

        The mechanisms here have no challenge step, so the default raises
        `txpika.errors.AuthenticationError`.
        """
        raise AuthenticationError(
            403, f"the broker sent a {self.mechanism} challenge, which this mechanism lacks"
        )


class PlainCredentials(Credentials):
    """SASL PLAIN: user name and password, in the clear (use TLS on untrusted networks)."""

    __slots__ = ("_password", "username")

    #: ``PLAIN`` (RFC 4616): the username and password in the clear; use TLS.
    mechanism = "PLAIN"

    def __init__(self, username: str, password: str) -> None:
        #: The username (the password is never shown in reprs or logs).
        self.username = username
        self._password = password

    def response(self) -> bytes:
        return b"\x00" + self.username.encode() + b"\x00" + self._password.encode()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(username={self.username!r}, password=<hidden>)"

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, PlainCredentials)
            and (other.username, other._password) == (self.username, self._password)
        )

    def __hash__(self) -> int:
        return hash((type(self), self.username))


class AMQPlainCredentials(PlainCredentials):
    """RabbitMQ's AMQPLAIN: the same secrets as PLAIN, sent as a field table."""

    __slots__ = ()

    #: ``AMQPLAIN``: RabbitMQ's field-table form of ``PLAIN``.
    mechanism = "AMQPLAIN"

    def response(self) -> bytes:
        # RabbitMQ reads the table's entries without the 4-byte length prefix.
        return encode_table({"LOGIN": self.username, "PASSWORD": self._password})[4:]


class ExternalCredentials(Credentials):
    """SASL EXTERNAL: the broker authenticates the TLS client certificate."""

    __slots__ = ()

    #: ``EXTERNAL``: the identity comes from the TLS client certificate.
    mechanism = "EXTERNAL"

    def response(self) -> bytes:
        return b""

    def __repr__(self) -> str:
        return "ExternalCredentials()"
