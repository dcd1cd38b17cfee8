"""`connect`: from a URL, `ConnectionParameters` or endpoint description to an open
`AMQPProtocol`."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectionClosed as TransportClosed
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IStreamClientEndpoint

from txpika.errors import ConnectionLost
from txpika.parameters import ConnectionParameters, InvalidParameter, parameters_for
from txpika.protocol import AMQPClientFactory, AMQPProtocol

__all__ = ["connect", "endpoint_for"]


def endpoint_for(reactor: Any, parameters: ConnectionParameters) -> IStreamClientEndpoint:
    """The Twisted client endpoint that reaches the broker ``parameters`` name.

    TLS (``amqps://``) verifies the certificate against ``cafile`` (or the platform's trust
    store) and the host name (``server_hostname`` or ``host``) unless ``verify`` is False.
    """
    from twisted.internet.endpoints import HostnameEndpoint, clientFromString

    if parameters.endpoint:
        try:
            return clientFromString(reactor, parameters.endpoint)  # type: ignore[no-untyped-call,no-any-return]
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidParameter(
                f"bad endpoint description {parameters.endpoint!r}: {exc}") from None
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, parameters.host, parameters.effective_port,
        timeout=parameters.connection_timeout)
    if parameters.tls:
        from txpika._tls import wrap_tls

        endpoint = wrap_tls(endpoint, parameters)
    return endpoint


def _tls_failure(failure: Any) -> Any:
    """A TLS handshake that failed (a certificate refused, a protocol mismatch) ends the
    transport before the AMQP handshake: connect() fails with the TLS error itself, not the
    `txpika.errors.ConnectionLost` that wraps it for everything else."""
    error = failure.value
    if isinstance(error, ConnectionLost) and error.reason is not None and not isinstance(
            error.reason, TransportClosed):
        raise error.reason
    return failure


def connect(reactor: Any, target: str | ConnectionParameters = "amqp://localhost/",
            **overrides: Any) -> Deferred[AMQPProtocol]:
    """Connect and complete the AMQP handshake.

    ``target`` is an ``amqp://``/``amqps://`` URL, a `ConnectionParameters`, or a Twisted
    client endpoint description (``tcp:host:port``, ``tls:...``, ``unix:path``);
    ``overrides`` replace any `ConnectionParameters` field. Fires with the open
    `AMQPProtocol`. Fails with `txpika.parameters.InvalidParameter` (bad URL or option),
    Twisted's connection errors (`twisted.internet.error.ConnectionRefusedError`, DNS and TLS
    failures), `txpika.errors.AuthenticationError`, `txpika.errors.AccessRefused` (vhost
    refused), or
    `twisted.internet.defer.TimeoutError` when connecting and the handshake together take
    longer than ``connection_timeout``.
    """
    from twisted.internet.defer import fail

    try:
        parameters = parameters_for(target, overrides)
        endpoint = endpoint_for(reactor, parameters)
    except Exception as exc:
        return fail(exc)
    factory = AMQPClientFactory(parameters, reactor)
    connecting: Deferred[AMQPProtocol] = endpoint.connect(factory)  # type: ignore[assignment]

    def handshake(protocol: AMQPProtocol) -> Deferred[AMQPProtocol]:
        return protocol.ready.addErrback(_tls_failure)

    d = connecting.addCallback(handshake)

    def timed_out(failure: Any, timeout: float | None = None) -> Any:
        if timeout is None:  # an errback: rewrite timeouts only (also the TCP connect's)
            failure.trap(TimeoutError, ConnectTimeoutError)
        raise TimeoutError(
            f"could not connect to {parameters.describe()} within "
            f"{parameters.connection_timeout:g} s")

    # The protocol has its own handshake timeout; this one also bounds TCP and TLS. A
    # cancelled endpoint fails with ConnectingCancelledError: onTimeoutCancel replaces it.
    d.addTimeout(parameters.connection_timeout + 1, reactor, onTimeoutCancel=timed_out)
    return d.addErrback(timed_out)
