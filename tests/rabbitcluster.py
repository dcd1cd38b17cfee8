"""A RabbitMQ cluster of private nodes on loopback, for tests (not a test module).

::

    with Cluster(3) as cluster:              # three nodes, joined, all running
        cluster.urls                         # their amqp:// URLs (guest, 127.0.0.1)
        node = cluster.node_for(service.current_broker)
        node.stop(); node.start()            # the whole node (its Erlang VM) goes, comes back
        node.kill()                          # kill -9 of the VM; node.start() brings it back
        node.stop_app(); node.start_app()    # only the RabbitMQ application
        cluster.running_nodes()              # names `cluster_status` lists as running
        cluster.wait_running(3)              # bounded

Forming: the nodes boot in parallel; every node but the first then runs ``stop_app``,
``join_cluster <first>``, ``start_app``; `Cluster.start` returns once ``cluster_status``
shows every node running (bounded by ``form_timeout``). A node that was stopped or killed
rejoins by itself when it starts again (its data directory, with the cluster's membership,
is kept until the cluster is stopped).

Isolation from the shared broker (rabbit@localhost on 5672/25672): unique node names
(``txpika-cluster-<pid>-<n>-<i>@localhost``), free loopback ports for AMQP and Erlang
distribution (never 5672 or 25672), each node's own config, env, enabled-plugins, data and
log files in one temporary directory, no plugins. The nodes share epmd (on 127.0.0.1), as
every Erlang node on a host does.

The Erlang cookie: a random one of the cluster's own, in ``<dir>/home/.erlang.cookie``
(mode 0400). Erlang, the node and the CLI alike, reads the cookie from ``$HOME``; so the
servers and every ``rabbitmqctl`` call run with ``HOME=<dir>/home``. Debian's
``/usr/sbin/rabbitmq-server`` and ``/usr/sbin/rabbitmqctl`` wrappers ``su`` to the rabbitmq
user, which resets HOME to /var/lib/rabbitmq (the shared node's cookie), so the scripts
behind them (``/usr/lib/rabbitmq/bin/*``) are run directly, as the rabbitmq user when run
as root (``subprocess``'s ``user``/``group``), as the calling user otherwise. Neither the
deprecated ``RABBITMQ_ERLANG_COOKIE`` nor ``--erlang-cookie`` is used: a cookie on a
command line shows in ``ps``. `Cluster.cookie_source` reports what the CLI used
(``rabbitmq-diagnostics erlang_cookie_sources``).

Everything started is stopped by `Cluster.stop`, also at interpreter exit (atexit) if a
test run is interrupted. Standard library only.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import json
import os
import secrets
import shutil
import signal
import string
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from rabbitnode import PrivateNode, PrivateNodeError, _alive, _rabbitmq_user, free_port

__all__ = ["Cluster", "ClusterNode", "rabbitmq_script"]

_counter = itertools.count(1)
_running: dict[int, Cluster] = {}


@atexit.register
def _stop_leftover_clusters() -> None:
    for cluster in list(_running.values()):
        with contextlib.suppress(Exception):
            cluster.stop()


def rabbitmq_script(name: str) -> str:
    """The path of RabbitMQ's own ``name`` script (not a wrapper that switches users)."""
    candidates = [f"/usr/lib/rabbitmq/bin/{name}",
                  *sorted(glob.glob(f"/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/{name}"))]
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    if found is None:
        raise PrivateNodeError(f"{name} is not installed: apt-get install rabbitmq-server")
    return found


def _run_as() -> dict[str, Any]:
    """subprocess arguments running a command as the rabbitmq user, if we are root."""
    user = _rabbitmq_user()
    if os.geteuid() == 0 and user is not None:
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    return {}


class ClusterNode(PrivateNode):
    """One node of a `Cluster`. Its ports, name and data survive `stop`, `kill`, `start`."""

    def __init__(self, cluster: Cluster, index: int) -> None:
        super().__init__(startup_timeout=cluster.startup_timeout,
                         ctl_timeout=cluster.ctl_timeout)
        self.cluster = cluster
        self.index = index
        self.nodename = f"txpika-cluster-{os.getpid()}-{cluster.number}-{index}@localhost"
        self.vm_running = False

    def __repr__(self) -> str:
        return f"<ClusterNode {self.index} {self.nodename} port={self.port}>"

    @property
    def running(self) -> bool:
        """The node's VM is up (the RabbitMQ application may be stopped: `app_running`)."""
        return self.vm_running

    @property
    def pid(self) -> int | None:
        """The Erlang VM's process id, from the node's pid file."""
        return self._read_pid()

    # -- lifecycle ------------------------------------------------------------------------

    def prepare(self) -> None:
        """Pick the ports and write the files (once, before the first start)."""
        taken = {n.port for n in self.cluster.nodes} | {n.dist_port for n in self.cluster.nodes}
        self.port = free_port(taken)
        self.dist_port = free_port(taken | {self.port})
        self.dir = self.cluster.dir / f"node{self.index}"
        self.dir.mkdir()
        self._write_files()

    def start(self) -> ClusterNode:
        """Boot the node's VM (again) and wait until its AMQP port answers."""
        if self.vm_running:
            raise PrivateNodeError(f"{self} is already running")
        assert self.dir is not None, "prepare() first"
        with contextlib.suppress(OSError):
            (self.dir / "rabbit.pid").unlink()
        self._pid = None
        started = time.monotonic()
        proc = self._run([rabbitmq_script("rabbitmq-server"), "-detached"],
                         self._server_env(), self.startup_timeout)
        if proc.returncode != 0:
            raise PrivateNodeError(f"rabbitmq-server -detached exited with "
                                   f"{proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}")
        self.vm_running = True
        self._wait_for_amqp(started + self.startup_timeout)
        self.app_running = True
        self.memory_watermark = 0.4
        return self

    def stop(self) -> None:
        """Stop RabbitMQ and its VM (``rabbitmqctl stop PIDFILE``); data is kept.

        A VM that will not go is killed. Idempotent.
        """
        if not self.vm_running or self.dir is None:
            return
        pid = self._read_pid()
        with contextlib.suppress(PrivateNodeError, subprocess.TimeoutExpired, OSError):
            self.rabbitmqctl("stop", str(self.dir / "rabbit.pid"), timeout=60, check=False)
        if pid is not None:
            self._kill(pid)
        self.vm_running = self.app_running = False

    def kill(self) -> None:
        """``kill -9`` the node's VM and wait until it is gone (bounded)."""
        pid = self._read_pid()
        if pid is None:
            raise PrivateNodeError(f"{self} has no pid file: not running?")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid):
            if time.monotonic() > deadline:
                raise PrivateNodeError(f"{self} (pid {pid}) still alive after SIGKILL")
            time.sleep(0.05)
        self.vm_running = self.app_running = False

    def reset(self) -> None:
        """Bring the node back to normal: VM and application running, no alarm."""
        if not self.vm_running:
            self.start()
        super().reset()

    # -- rabbitmqctl ----------------------------------------------------------------------

    def rabbitmqctl(self, *args: str, timeout: float | None = None, check: bool = True
                    ) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n NODE ARGS...`` with the cluster's cookie."""
        return self.cluster.ctl("rabbitmqctl", "-n", self.nodename, *args, timeout=timeout,
                                check=check)

    # -- internals ------------------------------------------------------------------------

    def _run(self, cmd: list[str], env: dict[str, str], timeout: float
             ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, env=env, cwd=str(self.dir), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, check=False,
                              **_run_as())

    def _ctl_env(self) -> dict[str, str]:  # type: ignore[override]
        return self.cluster.ctl_env()

    def _server_env(self) -> dict[str, str]:
        env = super()._server_env()
        # One scheduler thread each: three nodes share two cores with everything else.
        env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] += " +S 1:1"
        return env


class Cluster:
    """``size`` private RabbitMQ nodes joined into one cluster. See the module docstring."""

    def __init__(self, size: int = 3, *, startup_timeout: float = 90.0,
                 ctl_timeout: float = 60.0, form_timeout: float = 180.0) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.number = next(_counter)
        self.startup_timeout = startup_timeout
        self.ctl_timeout = ctl_timeout
        self.form_timeout = form_timeout
        self.dir = Path("/nonexistent")
        self.nodes: list[ClusterNode] = []
        self._size = size
        self._started = False
        #: Seconds the last `start` took to boot the nodes, to join them, and in all.
        self.timings: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"<Cluster {[n.nodename for n in self.nodes]}>"

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def home(self) -> Path:
        """HOME of the nodes and the CLI calls: holds the cluster's ``.erlang.cookie``."""
        return self.dir / "home"

    def node_for(self, broker: str | None) -> ClusterNode:
        """The node whose port a URL (or ``AMQPService.current_broker``) names."""
        for node in self.nodes:
            if broker is not None and f":{node.port}/" in broker:
                return node
        raise LookupError(f"no node of {self} at {broker!r}")

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Cluster:
        """Boot the nodes, join them, wait until ``cluster_status`` shows them all running."""
        if self._started:
            raise PrivateNodeError(f"{self} is already started")
        PrivateNode.check_available()
        rabbitmq_script("rabbitmq-server")
        began = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="txpika-cluster-"))
        self._started = True
        _running[id(self)] = self
        try:
            self._write_home()
            self.nodes = []
            for index in range(1, self._size + 1):
                node = ClusterNode(self, index)
                self.nodes.append(node)
                node.prepare()
            self._chown(self.dir)
            self._in_parallel(lambda node: node.start(), self.nodes)
            booted = time.monotonic()
            seed = self.nodes[0]
            for node in self.nodes[1:]:
                node.rabbitmqctl("stop_app")
                node.rabbitmqctl("join_cluster", seed.nodename)
                node.start_app()
            self.wait_running(self._size, self.form_timeout - (time.monotonic() - began))
            done = time.monotonic()
            self.timings = {"boot": booted - began, "join": done - booted,
                            "total": done - began}
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node (in parallel; killed if they will not go) and remove the
        directory. Idempotent; also run at exit for a cluster left running."""
        if not self._started:
            return
        with contextlib.suppress(Exception):
            self._in_parallel(lambda node: node.stop(), self.nodes)
        for node in self.nodes:  # whatever stop() could not reach
            pid = node._read_pid()
            if pid is not None and _alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)
        self._started = False
        _running.pop(id(self), None)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- status -----------------------------------------------------------------------------

    def running_nodes(self, via: ClusterNode | None = None) -> set[str]:
        """Node names ``cluster_status`` (asked of ``via``, or of the first node whose app
        runs) lists as running; empty if no node answers."""
        candidates = [via] if via is not None else [n for n in self.nodes if n.app_running]
        for node in candidates:
            proc = node.rabbitmqctl("cluster_status", "--formatter", "json", check=False,
                                    timeout=30)
            if proc.returncode != 0:
                continue
            with contextlib.suppress(ValueError):
                status = json.loads(proc.stdout)
                return set(status.get("running_nodes", []))
        return set()

    def wait_running(self, expected: int | Iterable[ClusterNode], timeout: float = 60.0
                     ) -> set[str]:
        """Wait until ``cluster_status`` lists ``expected`` running nodes (a count, or
        exactly those nodes); raise `PrivateNodeError` after ``timeout`` seconds."""
        if isinstance(expected, int):
            def ok(names: set[str]) -> bool:
                return len(names) == expected
            wanted = f"{expected} nodes"
        else:
            want = {node.nodename for node in expected}

            def ok(names: set[str]) -> bool:
                return names == want
            wanted = ", ".join(sorted(want))
        deadline = time.monotonic() + max(timeout, 1.0)
        names: set[str] = set()
        while time.monotonic() < deadline:
            names = self.running_nodes()
            if ok(names):
                return names
            time.sleep(0.5)
        raise PrivateNodeError(f"cluster_status did not show {wanted} running within "
                               f"{timeout:.0f}s (it shows {sorted(names)})")

    def cookie_source(self) -> str:
        """What ``rabbitmq-diagnostics erlang_cookie_sources`` says about the CLI's cookie."""
        return self.ctl("rabbitmq-diagnostics", "erlang_cookie_sources", timeout=30).stdout

    # -- the CLI ----------------------------------------------------------------------------

    def ctl(self, script: str, *args: str, timeout: float | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        """Run one of RabbitMQ's CLI scripts with the cluster's cookie (its HOME)."""
        cmd = [rabbitmq_script(script), *args]
        proc = subprocess.run(cmd, env=self.ctl_env(), cwd=str(self.dir),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=self.ctl_timeout if timeout is None else timeout,
                              check=False, **_run_as())
        if check and proc.returncode != 0:
            raise PrivateNodeError(f"{script} {' '.join(args)} exited with {proc.returncode}: "
                                   f"{(proc.stdout + proc.stderr)[-2000:]}")
        return proc

    def ctl_env(self) -> dict[str, str]:
        """The environment of the CLI and of the nodes: HOME is the cluster's; no
        RABBITMQ_* of the caller's, no /etc/rabbitmq/rabbitmq-env.conf."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(HOME=str(self.home), RABBITMQ_CONF_ENV_FILE=str(self.home / "empty.conf"),
                   ERL_EPMD_ADDRESS="127.0.0.1")
        return env

    # -- internals --------------------------------------------------------------------------

    def _write_home(self) -> None:
        self.home.mkdir()
        (self.home / "empty.conf").write_text("")
        cookie = self.home / ".erlang.cookie"
        alphabet = string.ascii_uppercase
        cookie.write_text("".join(secrets.choice(alphabet) for _ in range(32)))
        cookie.chmod(0o400)

    @staticmethod
    def _chown(top: Path) -> None:
        user = _rabbitmq_user()
        if os.geteuid() != 0 or user is None:
            return
        for root, dirs, files in os.walk(top):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.chown(name, user.pw_uid, user.pw_gid)

    @staticmethod
    def _in_parallel(action: Callable[[ClusterNode], object], nodes: list[ClusterNode]) -> None:
        errors: list[BaseException] = []

        def run(node: ClusterNode) -> None:
            try:
                action(node)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(node,), daemon=True) for node in nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
