"""TLS client options for ``amqps://`` (needs Twisted's ``tls`` extra: pyOpenSSL and
service_identity)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IStreamClientEndpoint

from txpika.parameters import ConnectionParameters, InvalidParameter

__all__ = ["wrap_tls"]

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def _trust_root(ssl: Any, cafile: str) -> Any:
    """Every certificate in ``cafile`` (a PEM bundle may hold several CAs) as trust root."""
    try:
        data = Path(cafile).read_bytes()
    except OSError as exc:
        raise InvalidParameter(f"cannot read cafile: {exc}") from None
    blocks = _PEM_CERTIFICATE.findall(data)
    if not blocks:
        raise InvalidParameter(f"cafile {cafile!r} holds no PEM certificate")
    try:
        certificates = [ssl.Certificate.loadPEM(block) for block in blocks]
    except Exception as exc:
        raise InvalidParameter(f"cannot load the certificates in cafile {cafile!r}: {exc}"
                               ) from None
    return ssl.trustRootFromCertificates(certificates)


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
        try:
            client_cert = ssl.PrivateCertificate.loadPEM(pem)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise InvalidParameter(
                f"cannot load the client certificate and key from {parameters.certfile!r}"
                f" and {key_path!r}: {exc}") from None
    if not parameters.verify:
        options: Any = ssl.CertificateOptions(
            verify=False,
            privateKey=client_cert.privateKey.original if client_cert else None,
            certificate=client_cert.original if client_cert else None,
        )
    else:
        trust = _trust_root(ssl, parameters.cafile) if parameters.cafile else None
        options = ssl.optionsForClientTLS(hostname, trustRoot=trust,
                                          clientCertificate=client_cert)
    return wrapClientTLS(options, endpoint)
