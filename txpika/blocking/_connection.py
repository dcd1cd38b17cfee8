"""The blocking connection's own methods: opening, state, servicing, closing.

`ConnectionBase` is the base of `txpika.blocking.BlockingConnection` (in
`txpika.blocking._api`, which adds ``channel()``; its channels publish through
`txpika.blocking._publishing`); the socket loop is `txpika.blocking._io.SocketLoop`, and
the events go through the same session and channel books as every other adapter
(`txpika._session`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from typing import Any, Self

from txpika._requests import Requests
from txpika._session import CoreFacts, Session, core_for
from txpika.blocking._io import SocketLoop
from txpika.blocking._log import log
from txpika.connection import ConnState
from txpika.parameters import ConnectionParameters

__all__ = ["ConnectionBase"]


class ConnectionBase(CoreFacts, SocketLoop):
    """An AMQP connection over a plain (or TLS) socket; see `txpika.blocking`.

    Opened by the constructor (or `txpika.blocking.connect`): it returns once
    ``connection.open-ok`` arrived, or raises as `txpika.blocking.connect` says.
    """

    def __init__(self, parameters: ConnectionParameters) -> None:
        self.parameters = p = parameters
        self._core = core_for(parameters)
        self._requests = Requests(self._core.dialect)
        self._session = Session(self._core, flush=self._flush, log=log,
                                on_closed=self._closed)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._reading = False
        self._waiters = 0
        self._raw_pending = False
        self._dispatching = False
        self._error: BaseException | None = None
        self._callbacks: deque[Any] = deque()
        self._next_tick: float | None = None
        self._setup_socket()
        with self._lock:
            self._core.initiate()
            self._flush()
        try:
            self._wait(lambda: self._core.is_open or self._error is not None,
                       p.connection_timeout)
            if self._error is not None:
                raise self._error
        except TimeoutError:
            self._sock.close()
            raise TimeoutError(f"no AMQP handshake with {p.describe()} within "
                               f"{p.connection_timeout:g} s") from None
        except BaseException:
            self._sock_close()  # refused (credentials, vhost) or lost: no socket left open
            raise
        self._next_tick = self._core.heartbeat_tick(time.monotonic())

    def __repr__(self) -> str:
        return f"<BlockingConnection {self.parameters.describe()} {self._core.state.value}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _closed(self, error: BaseException) -> None:
        self._error = error

    # -- public -------------------------------------------------------------------------------

    def process_data_events(self, time_limit: float = 0) -> None:
        """Service the connection for up to ``time_limit`` seconds: read what arrived,
        run consumer callbacks, send and check heartbeats. Raises the connection's error
        once it is closed."""
        self._wait(lambda: False, time_limit, raise_timeout=False, run_callbacks=True)
        self._check()

    def close(self, reply_code: int = 200, reply_text: str = "Normal shutdown",
              timeout: float = 10.0) -> None:
        """Close the connection cleanly (bounded by ``timeout``); closing twice is fine."""
        with self._lock:
            if self._core.state is ConnState.CLOSED:
                self._sock_close()
                return
            self._core.close(reply_code, reply_text)
            self._process()
            self._flush()
        with contextlib.suppress(TimeoutError):
            self._wait(lambda: self._core.state is ConnState.CLOSED, timeout,
                       raise_errors=False)
        with self._lock:
            self._sock_close()
