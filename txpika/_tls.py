"""TLS client options for ``amqps://`` (needs Twisted's ``tls`` extra: pyOpenSSL and
service_identity)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IStreamClientEndpoint

from txpika.parameters import ConnectionParameters, InvalidParameter

__all__ = ["wrap_tls"]


def wrap_tls(endpoint: IStreamClientEndpoint,
             parameters: ConnectionParameters) -> IStreamClientEndpoint:
    """Wrap ``endpoint`` in TLS as ``parameters`` ask (verification on by default)."""
    try:
        from twisted.internet import ssl
        from twisted.internet.endpoints import wrapClientTLS
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise InvalidParameter(
            f"amqps:// needs TLS support: pip install 'twisted[tls]' ({exc})") from None
    hostname = parameters.server_hostname or parameters.host
    client_cert: Any = None
    if parameters.certfile:
        key_path = parameters.keyfile or parameters.certfile
        try:
            pem = Path(parameters.certfile).read_bytes() + b"\n" + Path(key_path).read_bytes()
        except OSError as exc:
            raise InvalidParameter(f"cannot read the client certificate: {exc}") from None
        client_cert = ssl.PrivateCertificate.loadPEM(pem)  # type: ignore[no-untyped-call]
    if not parameters.verify:
        options: Any = ssl.CertificateOptions(
            verify=False,
            privateKey=client_cert.privateKey.original if client_cert else None,
            certificate=client_cert.original if client_cert else None,
        )
    else:
        trust: Any = None
        if parameters.cafile:
            try:
                trust = ssl.Certificate.loadPEM(Path(parameters.cafile).read_bytes())
            except OSError as exc:
                raise InvalidParameter(f"cannot read cafile: {exc}") from None
        options = ssl.optionsForClientTLS(hostname, trustRoot=trust,
                                          clientCertificate=client_cert)
    return wrapClientTLS(options, endpoint)
