"""A private RabbitMQ node for tests that hurt a broker (not a test module).

Tests that stop or restart a broker, block it with a memory alarm or kill its connections
must never do that to the shared broker on 127.0.0.1:5672. ``PrivateNode`` starts a node of
its own from the installed ``rabbitmq-server``::

    with PrivateNode() as node:
        url = node.url                       # amqp://guest:guest@127.0.0.1:<port>/%2F
        node.set_memory_watermark(0)         # memory alarm: publishers get blocked
        node.set_memory_watermark(0.4)       # back to normal
        node.close_all_connections()         # the broker closes every client connection
        node.restart()                       # stop_app + start_app: connections drop
        node.stop_app(); node.start_app()    # the same, with a pause of your choosing

Isolation: a unique node name (``txpika-test-<pid>-<n>@localhost``), its own AMQP port and
Erlang distribution port (free loopback ports, never 5672 or 25672), its own data, log,
config and enabled-plugins files in a temporary directory, all listeners on 127.0.0.1, no
plugins (so no management listener). ``stop()`` halts the node (killing it if it does not go)
and removes the directory.

Privileges: Debian's ``rabbitmq-server`` and ``rabbitmqctl`` wrappers, run as root, switch to
the ``rabbitmq`` user with ``su`` (HOME=/var/lib/rabbitmq); the ``RABBITMQ_*`` variables set
here pass through ``su`` unchanged. The node and ``rabbitmqctl`` therefore share the Erlang
cookie in /var/lib/rabbitmq/.erlang.cookie, and the temporary directory is owned by
``rabbitmq``. Run as the ``rabbitmq`` user it works the same. Any other user gets
``PrivateNodeError`` with what to do.

Standard library only, so it works from Twisted tests and plain tests alike.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["PrivateNode", "PrivateNodeError", "amqp_answers", "free_port"]

_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
_RESERVED_PORTS = frozenset({4369, 5671, 5672, 15672, 25672})
# rabbitmqctl's own distribution ports (35672..35682) must stay free for the CLI tools.
_CLI_PORTS = range(35672, 35683)
_counter = itertools.count(1)
# Nodes still running when the interpreter exits (a test run interrupted, a helper that forgot
# stop()) are stopped then, so no private node outlives its test run.
_running: dict[int, PrivateNode] = {}


@atexit.register
def _stop_leftover_nodes() -> None:
    for node in list(_running.values()):
        with contextlib.suppress(Exception):
            node.stop()


class PrivateNodeError(RuntimeError):
    """The private node could not be started or controlled."""


def amqp_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """True if host:port answers the AMQP 0-9-1 header with a method frame on channel 0."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_AMQP_HEADER)
            data = b""
            while len(data) < 3:
                chunk = sock.recv(7 - len(data))
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False
    return data.startswith(b"\x01\x00\x00")


def free_port(exclude: set[int] | None = None) -> int:
    """A TCP port on 127.0.0.1 that is free right now (found by binding port 0)."""
    exclude = exclude or set()
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _RESERVED_PORTS and port not in _CLI_PORTS and port not in exclude:
            return port
    raise PrivateNodeError("could not find a free port on 127.0.0.1")


def _rabbitmq_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("rabbitmq")
    except KeyError:
        return None


class PrivateNode:
    """A RabbitMQ node of its own, on free loopback ports, in a temporary directory."""

    host = "127.0.0.1"

    def __init__(self, *, startup_timeout: float = 60.0, ctl_timeout: float = 60.0,
                 config: str = "", advanced_config: str = "") -> None:
        # config: more rabbitmq.conf lines; advanced_config: an advanced.config (Erlang terms)
        self.config = config
        self.advanced_config = advanced_config
        self.startup_timeout = startup_timeout
        self.ctl_timeout = ctl_timeout
        self.nodename = f"txpika-test-{os.getpid()}-{next(_counter)}@localhost"
        self.port: int = 0
        self.dist_port: int = 0
        self.dir: Path | None = None
        self.memory_watermark: float = 0.4
        self.app_running = False
        self._pid: int | None = None

    # -- info -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/%2F"

    @property
    def running(self) -> bool:
        return self.dir is not None

    def answers(self, timeout: float = 2.0) -> bool:
        return self.port != 0 and amqp_answers(self.host, self.port, timeout)

    def __repr__(self) -> str:
        return f"<PrivateNode {self.nodename} port={self.port} dir={self.dir}>"

    # -- lifecycle ------------------------------------------------------------------------

    @staticmethod
    def check_available() -> None:
        """Raise PrivateNodeError, saying why, if a private node cannot be started here."""
        if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
            raise PrivateNodeError(
                "rabbitmq-server is not installed: apt-get install rabbitmq-server "
                "(scripts/ensure-broker does it when run as root)"
            )
        user = _rabbitmq_user()
        uid = os.geteuid()
        if uid != 0 and (user is None or uid != user.pw_uid):
            raise PrivateNodeError(
                "starting a private RabbitMQ node needs root or the rabbitmq user "
                "(deselect these tests with -m 'not private_broker')"
            )

    def start(self) -> PrivateNode:
        if self.running:
            raise PrivateNodeError(f"{self} is already running")
        self.check_available()
        self.port = free_port()
        self.dist_port = free_port({self.port})
        self.dir = Path(tempfile.mkdtemp(prefix="txpika-rabbit-"))
        _running[id(self)] = self
        try:
            self._write_files()
            started = time.monotonic()
            proc = subprocess.run(
                ["rabbitmq-server", "-detached"],
                env=self._server_env(),
                cwd="/",
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.startup_timeout,
                check=False,
            )
            if proc.returncode != 0:
                raise PrivateNodeError(
                    f"rabbitmq-server -detached exited with {proc.returncode}: "
                    f"{(proc.stdout + proc.stderr).decode(errors='replace')[-2000:]}"
                )
            self._wait_for_amqp(started + self.startup_timeout)
            self.app_running = True
            self.memory_watermark = 0.4
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Halt the node (kill it if it will not go) and remove its directory. Idempotent."""
        if self.dir is None:
            return
        pid = self._read_pid()
        with contextlib.suppress(PrivateNodeError, subprocess.TimeoutExpired, OSError):
            # With the pid file, `stop` also waits for the VM to exit.
            pidfile = str(self.dir / "rabbit.pid")
            self.rabbitmqctl("stop", pidfile, timeout=30, check=False)
        if pid is not None:
            self._kill(pid)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        self.app_running = False
        _running.pop(id(self), None)

    def stop_app(self) -> None:
        """Stop the RabbitMQ application (the VM stays up): connections drop, port closes."""
        self.rabbitmqctl("stop_app")
        self.app_running = False

    def start_app(self) -> None:
        """Start the application again and wait until the AMQP port answers."""
        self.rabbitmqctl("start_app")
        self._wait_for_amqp(time.monotonic() + self.startup_timeout)
        self.app_running = True
        # A restarted app re-reads the configured watermark.
        self.memory_watermark = 0.4

    def restart(self) -> None:
        """Stop and start the application: every client connection is lost."""
        self.stop_app()
        self.start_app()

    def set_memory_watermark(self, value: float) -> None:
        """`set_vm_memory_high_watermark`: 0 raises the memory alarm at once, 0.4 is normal."""
        self.rabbitmqctl("set_vm_memory_high_watermark", f"{float(value):g}")
        self.memory_watermark = float(value)

    def close_all_connections(self, reason: str = "closed by txpika tests") -> None:
        self.rabbitmqctl("close_all_connections", "--global", reason)

    def reset(self) -> None:
        """Bring a node that a test hurt back to normal: app running, no alarm."""
        if not self.running:
            self.start()
            return
        if not self.app_running or not self.answers():
            with contextlib.suppress(PrivateNodeError):
                self.rabbitmqctl("start_app")
            self._wait_for_amqp(time.monotonic() + self.startup_timeout)
            self.app_running = True
        if self.memory_watermark != 0.4:
            self.set_memory_watermark(0.4)

    def __enter__(self) -> PrivateNode:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- rabbitmqctl ----------------------------------------------------------------------

    def rabbitmqctl(
        self, *args: str, timeout: float | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n NODE ARGS...`` against this node."""
        cmd = ["rabbitmqctl", "-n", self.nodename, *args]
        proc = subprocess.run(
            cmd,
            env=self._ctl_env(),
            cwd="/",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.ctl_timeout if timeout is None else timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise PrivateNodeError(
                f"{' '.join(cmd)} exited with {proc.returncode}: "
                f"{(proc.stdout + proc.stderr)[-2000:]}"
            )
        return proc

    # -- internals ------------------------------------------------------------------------

    def _write_files(self) -> None:
        assert self.dir is not None
        d = self.dir
        (d / "enabled_plugins").write_text("")
        (d / "rabbitmq-env.conf").write_text("")
        # Our own config file, so /etc/rabbitmq/rabbitmq.conf (which names port 5672) is not
        # read. loopback_users keeps guest usable from 127.0.0.1 only, as by default.
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {self.host}:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "log.file.level = info\n"
            + self.config
        )
        if self.advanced_config:
            (d / "advanced.config").write_text(self.advanced_config)
        for sub in ("mnesia", "log"):
            (d / sub).mkdir()
        user = _rabbitmq_user()
        if os.geteuid() == 0 and user is not None:
            for path in [d, *d.iterdir()]:
                os.chown(path, user.pw_uid, user.pw_gid)

    def _server_env(self) -> dict[str, str]:
        assert self.dir is not None
        d = self.dir
        env = self._ctl_env()
        env.update(
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "rabbit.pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            # epmd (if this node is the one that starts it) and distribution: loopback only.
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    @staticmethod
    def _ctl_env() -> dict[str, str]:
        # Leave out any RABBITMQ_* of the caller's, which could point at another node; the
        # CLI reads /etc/rabbitmq/rabbitmq-env.conf like the default node's CLI does.
        return {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}

    def _wait_for_amqp(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.answers(timeout=1.0):
                return
            pid = self._read_pid()
            if pid is not None and not _alive(pid):
                raise PrivateNodeError(f"{self} exited during startup:\n{self._log_tail()}")
            time.sleep(0.5)
        if self.answers(timeout=2.0):
            return
        raise PrivateNodeError(
            f"{self} did not answer AMQP on {self.host}:{self.port} within "
            f"{self.startup_timeout:.0f}s:\n{self._log_tail()}"
        )

    def _read_pid(self) -> int | None:
        if self.dir is not None:
            with contextlib.suppress(OSError, ValueError):
                self._pid = int((self.dir / "rabbit.pid").read_text().strip())
        return self._pid

    def _kill(self, pid: int) -> None:
        """Wait briefly for the VM to exit, then SIGTERM, then SIGKILL."""
        for sig, grace in ((None, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if not _alive(pid):
                    return
                time.sleep(0.1)

    def _log_tail(self, lines: int = 30) -> str:
        if self.dir is None:
            return ""
        out = []
        for log in sorted((self.dir / "log").glob("*.log")):
            with contextlib.suppress(OSError):
                text = log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out) or "(no log)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive; the VM is not our child, so this is rare but cheap to check.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True
