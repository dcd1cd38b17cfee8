"""Throwaway certificates and a private RabbitMQ node with a TLS listener (not a test module).

``make_certs(directory)`` writes, with the ``cryptography`` package (Twisted's ``tls`` extra
brings it in)::

    ca.pem / ca.key            a throwaway CA ("txpika test CA")
    server.pem / server.key    CN=localhost, SAN DNS:localhost and IP:127.0.0.1, signed by ca
    wrong.pem / wrong.key      CN=wrong.example, SAN DNS:wrong.example, signed by ca
    client.pem / client.key    CN=<client_cn> (clientAuth), signed by ca
    client-combined.pem        client.pem followed by client.key (certfile without keyfile)
    other-ca.pem               an unrelated CA that signed nothing here
    bundle.pem                 other-ca.pem followed by ca.pem (a multi-CA cafile)
    trust/ca.pem               a directory holding only ca.pem (Twisted's ``trustRoots=``)

``TLSNode`` is a `rabbitnode.PrivateNode` (same isolation, lifecycle and rabbitmqctl) that also
listens for AMQP over TLS on ``tls_port`` (127.0.0.1), with the server certificate above,
``verify = verify_peer`` and ``fail_if_no_peer_cert = false``: a client certificate signed by
the CA is asked for and checked, but not required. With ``external_auth=True`` it also enables
``rabbitmq_auth_mechanism_ssl`` and offers EXTERNAL (user name = the certificate's CN).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rabbitnode import PrivateNode, PrivateNodeError, _rabbitmq_user, free_port

__all__ = ["CertSet", "TLSNode", "make_certs"]


@dataclass(frozen=True)
class CertSet:
    dir: Path

    def __getattr__(self, name: str) -> str:
        # ca_pem -> <dir>/ca.pem, client_key -> <dir>/client.key, trust -> <dir>/trust
        if name.startswith("__"):
            raise AttributeError(name)
        stem, _, ext = name.rpartition("_")
        if not stem:
            return str(self.dir / name)
        return str(self.dir / f"{stem.replace('_', '-')}.{ext}")


def _name(cn: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "txpika tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject_cn: str, key: Any, issuer: tuple[Any, Any] | None, *,
          ca: bool = False, sans: list[Any] | None = None, client: bool = False) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.UTC)
    subject = _name(subject_cn)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False,
                          key_agreement=True, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False), critical=True)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_certs(directory: Path, client_cn: str = "guest") -> CertSet:
    """Write the CA, server, wrong-name and client certificates into ``directory``.

    The directory and its files are made readable by the ``rabbitmq`` user (chowned to it
    when run as root), so a node can read them.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    def pem(cert: Any) -> bytes:
        return bytes(cert.public_bytes(serialization.Encoding.PEM))

    def key_pem(key: Any) -> bytes:
        return bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))

    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca = _cert("txpika test CA", ca_key, None, ca=True)
    other_key = _key()
    other_ca = _cert("txpika unrelated CA", other_key, None, ca=True)
    files: dict[str, bytes] = {
        "ca.pem": pem(ca), "ca.key": key_pem(ca_key),
        "other-ca.pem": pem(other_ca),
        "bundle.pem": pem(other_ca) + pem(ca),
    }
    leaves = {
        "server": ("localhost", [x509.DNSName("localhost"),
                                 x509.IPAddress(ipaddress.ip_address("127.0.0.1"))], False),
        "wrong": ("wrong.example", [x509.DNSName("wrong.example")], False),
        "client": (client_cn, None, True),
    }
    for stem, (cn, sans, client) in leaves.items():
        key = _key()
        cert = _cert(cn, key, (ca, ca_key), sans=sans, client=client)
        files[f"{stem}.pem"] = pem(cert)
        files[f"{stem}.key"] = key_pem(key)
    files["client-combined.pem"] = files["client.pem"] + files["client.key"]
    for name, data in files.items():
        (directory / name).write_bytes(data)
    (directory / "trust").mkdir(exist_ok=True)
    (directory / "trust" / "ca.pem").write_bytes(files["ca.pem"])
    user = _rabbitmq_user()
    for path in [directory, directory / "trust", *directory.iterdir(),
                 *(directory / "trust").iterdir()]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if os.geteuid() == 0 and user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)
    return CertSet(directory)


class TLSNode(PrivateNode):
    """A `PrivateNode` with an AMQP-over-TLS listener on ``tls_port`` too."""

    def __init__(self, certs: CertSet, *, external_auth: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.certs = certs
        self.external_auth = external_auth
        self.tls_port = 0

    def tls_url(self, host: str = "localhost", query: str = "") -> str:
        return (f"amqps://guest:guest@{host}:{self.tls_port}/%2F"
                + (f"?{query}" if query else ""))

    def start(self) -> TLSNode:
        super().start()
        # The TLS listener starts with the TCP one; make sure it accepts before tests run.
        deadline = time.monotonic() + self.startup_timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                    (self.host, self.tls_port), timeout=1.0):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise PrivateNodeError(f"{self}: nothing listens on TLS port {self.tls_port}")
            time.sleep(0.2)

    def _write_files(self) -> None:
        super()._write_files()
        assert self.dir is not None
        self.tls_port = free_port({self.port, self.dist_port})
        c = self.certs
        lines = [
            f"listeners.ssl.default = {self.host}:{self.tls_port}",
            f"ssl_options.cacertfile = {c.ca_pem}",
            f"ssl_options.certfile = {c.server_pem}",
            f"ssl_options.keyfile = {c.server_key}",
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = false",
        ]
        if self.external_auth:
            lines += [
                "auth_mechanisms.1 = PLAIN",
                "auth_mechanisms.2 = AMQPLAIN",
                "auth_mechanisms.3 = EXTERNAL",
                "ssl_cert_login_from = common_name",
            ]
            (self.dir / "enabled_plugins").write_text("[rabbitmq_auth_mechanism_ssl].\n")
        with (self.dir / "rabbitmq.conf").open("a") as conf:
            conf.write("\n".join(lines) + "\n")

    def __repr__(self) -> str:
        return (f"<TLSNode {self.nodename} port={self.port} tls_port={self.tls_port} "
                f"dir={self.dir}>")
