"""Shared pytest fixtures for txpika's tests.

- ``broker_url`` (session): the broker for integration tests, from ``TXPIKA_TEST_URL``
  (default ``amqp://guest:guest@127.0.0.1:5672/%2F``). If nothing answers AMQP there within
  5 s the test FAILS (it is never skipped): a missing broker must not look like a green run.
  Every test marked ``broker`` gets this check, and every test that uses ``broker_url`` is
  marked ``broker`` (so ``-m "not broker"`` deselects it).
- ``broker_address`` (session): ``(host, port)`` of that broker, e.g. for ``tcpproxy.Proxy``.
- ``private_node`` (function): a private RabbitMQ node (``rabbitnode.PrivateNode``) for tests
  that stop, block or break a broker. One node is shared by the tests of a module and brought
  back to normal (application running, no memory alarm) before each test. Tests using it are
  marked ``private_broker``. If the node cannot start, the test fails with the reason.
- ``cluster`` (function): a cluster of three private nodes (``rabbitcluster.Cluster``),
  formed once per module and brought back to normal (every node running and in the
  cluster) before each test. Tests using it are marked ``cluster``. If the cluster cannot
  form, the test fails with the reason.

Twisted: pytest-twisted is enabled by its entry point; tests that need the reactor ask for it
(``pytest_twisted.ensureDeferred`` / ``pytest_twisted.inlineCallbacks``, or the ``reactor``
fixture). Nothing here imports txpika or Twisted: the helpers are standard-library only.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.parse
from collections.abc import Iterator

import pytest
from rabbitcluster import Cluster
from rabbitnode import PrivateNode, PrivateNodeError

DEFAULT_TEST_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
BROKER_WAIT_SECONDS = 5.0
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _address(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of an amqp:// or amqps:// URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ValueError(f"TXPIKA_TEST_URL must be an amqp:// or amqps:// URL, not {url!r}")
    tls = parts.scheme == "amqps"
    host = parts.hostname or "localhost"
    port = parts.port or (5671 if tls else 5672)
    return host, port, tls


def _probe(host: str, port: int, tls: bool, timeout: float) -> str | None:
    """None if host:port answers like an AMQP 0-9-1 broker, else what went wrong.

    Plain sockets: connect, send the protocol header, expect a method frame on channel 0
    (connection.start). For amqps:// only the TCP connect is checked.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if tls:
                return None
            sock.settimeout(timeout)
            sock.sendall(_AMQP_HEADER)
            data = b""
            while len(data) < 3:
                chunk = sock.recv(7 - len(data))
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    if data.startswith(b"\x01\x00\x00"):
        return None
    return f"the peer answered {data!r}, not an AMQP connection.start frame"


def _wait_for_broker(host: str, port: int, tls: bool, wait: float) -> str | None:
    deadline = time.monotonic() + wait
    while True:
        remaining = deadline - time.monotonic()
        error = _probe(host, port, tls, timeout=max(0.5, min(2.0, remaining)))
        if error is None or time.monotonic() + 0.25 >= deadline:
            return error
        time.sleep(0.25)


@pytest.fixture(scope="session")
def broker_url() -> str:
    url = os.environ.get("TXPIKA_TEST_URL", "").strip() or DEFAULT_TEST_URL
    try:
        host, port, tls = _address(url)
    except ValueError as e:
        pytest.fail(str(e), pytrace=False)
    error = _wait_for_broker(host, port, tls, BROKER_WAIT_SECONDS)
    if error is not None:
        pytest.fail(
            f"no AMQP broker answers at {host}:{port} (TXPIKA_TEST_URL={_redact(url)}) "
            f"within {BROKER_WAIT_SECONDS:.0f}s: {error}.\n"
            "Start one with scripts/ensure-broker (or `rabbitmq-server -detached` as root), "
            "point TXPIKA_TEST_URL at a running broker, or deselect these tests with "
            "-m 'not broker'.",
            pytrace=False,
        )
    return url


@pytest.fixture(scope="session")
def broker_address(broker_url: str) -> tuple[str, int]:
    host, port, _ = _address(broker_url)
    return host, port


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "broker_url" in names and item.get_closest_marker("broker") is None:
            item.add_marker(pytest.mark.broker)
        if "private_node" in names and item.get_closest_marker("private_broker") is None:
            item.add_marker(pytest.mark.private_broker)
        if "cluster" in names and item.get_closest_marker("cluster") is None:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(autouse=True)
def _require_broker_for_marked_tests(request: pytest.FixtureRequest) -> None:
    """Tests marked ``broker`` fail up front if the broker does not answer."""
    if request.node.get_closest_marker("broker") is not None:
        request.getfixturevalue("broker_url")


@pytest.fixture(scope="module")
def _private_node_for_module() -> Iterator[PrivateNode]:
    node = PrivateNode()
    try:
        node.start()
    except PrivateNodeError as e:
        pytest.fail(f"could not start a private RabbitMQ node: {e}", pytrace=False)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def private_node(_private_node_for_module: PrivateNode) -> PrivateNode:
    node = _private_node_for_module
    try:
        node.reset()
    except PrivateNodeError as e:
        pytest.fail(f"could not bring the private RabbitMQ node back: {e}", pytrace=False)
    return node


@pytest.fixture(scope="module")
def _cluster_for_module() -> Iterator[Cluster]:
    cluster = Cluster(3)
    try:
        cluster.start()
    except PrivateNodeError as e:
        pytest.fail(f"could not form a RabbitMQ cluster of private nodes: {e}", pytrace=False)
    print(f"\ncluster of {len(cluster.nodes)} formed in {cluster.timings['total']:.1f} s "
          f"(boot {cluster.timings['boot']:.1f} s, join {cluster.timings['join']:.1f} s)")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(_cluster_for_module: Cluster) -> Cluster:
    cluster = _cluster_for_module
    try:
        for node in cluster.nodes:
            node.reset()
        cluster.wait_running(len(cluster.nodes), 60)
    except PrivateNodeError as e:
        pytest.fail(f"could not bring the cluster back to normal: {e}", pytrace=False)
    return cluster
