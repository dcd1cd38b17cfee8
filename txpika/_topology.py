"""The recorded topology of a reconnecting service, replayed on every new connection.

`Topology` remembers the exchanges, exchange bindings, queues and queue bindings declared
through robust channels, in order, and declares them again on a new connection. A
server-named queue is declared again under a new name; its bindings follow it, and rename
listeners learn the new name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

if TYPE_CHECKING:
    from txpika.channel import Channel

__all__ = ["Topology", "binding_key"]

log = Logger()


def binding_key(arguments: Mapping[str, Any] | None) -> str:
    """The arguments of a binding as part of the key it is recorded under."""
    return repr(sorted((arguments or {}).items()))


class Topology:
    """What was declared, in order, to be declared again on a new connection."""

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._server_named: set[str] = set()
        self._renamed: dict[str, str] = {}  # every earlier name -> the current one
        self.rename_listeners: list[Callable[[str, str], object]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        """The recorded declarations, oldest first (for inspection and tests)."""
        return [(key, dict(kwargs)) for key, kwargs in self._entries.items()]

    def exchange(self, kwargs: dict[str, Any]) -> None:
        self._entries[("exchange", kwargs["exchange"])] = kwargs

    def exchange_binding(self, kwargs: dict[str, Any]) -> None:
        key = ("xbind", kwargs["destination"], kwargs["source"], kwargs["routing_key"],
               binding_key(kwargs.get("arguments")))
        self._entries[key] = kwargs

    def queue(self, name: str, kwargs: dict[str, Any], server_named: bool) -> None:
        self._entries[("queue", name)] = kwargs
        if server_named:
            self._server_named.add(name)

    def queue_binding(self, kwargs: dict[str, Any]) -> None:
        key = ("qbind", kwargs["queue"], kwargs["exchange"], kwargs["routing_key"],
               binding_key(kwargs.get("arguments")))
        self._entries[key] = kwargs

    def forget(self, kind: str, name: str, *rest: Any) -> None:
        """Forget an entity; an exchange or queue takes the bindings that name it along."""
        self._entries.pop((kind, name, *rest), None)
        if kind == "exchange":
            doomed = [k for k in self._entries if (k[0] == "xbind" and name in k[1:3])
                      or (k[0] == "qbind" and k[2] == name)]
        elif kind == "queue":
            self._server_named.discard(name)
            doomed = [k for k in self._entries if k[0] == "qbind" and k[1] == name]
        else:
            doomed = []
        for key in doomed:
            del self._entries[key]

    async def replay(self, channel: Channel) -> None:
        """Declare everything again on ``channel``, in order; server-named queues get new
        names, which their bindings follow and rename listeners learn."""
        renames: dict[str, str] = {}
        for key, kwargs in list(self._entries.items()):
            kind = key[0]
            if kind == "exchange":
                await channel.exchange_declare(**kwargs)
            elif kind == "xbind":
                await channel.exchange_bind(**kwargs)
            elif kind == "queue":
                name = key[1]
                if name in self._server_named:
                    ok = await channel.queue_declare("", **kwargs)
                    renames[name] = ok.queue
                else:
                    await channel.queue_declare(name, **kwargs)
            elif kind == "qbind":
                bound = dict(kwargs)
                bound["queue"] = renames.get(bound["queue"], bound["queue"])
                await channel.queue_bind(**bound)
        if renames:
            self._rename(renames)

    def _rename(self, renames: dict[str, str]) -> None:
        entries: dict[tuple[Any, ...], dict[str, Any]] = {}
        for key, kwargs in self._entries.items():
            if key[0] == "queue" and key[1] in renames:
                new = renames[key[1]]
                self._server_named.discard(key[1])
                self._server_named.add(new)
                entries[("queue", new)] = kwargs
            elif key[0] == "qbind" and key[1] in renames:
                bound = dict(kwargs, queue=renames[key[1]])
                entries[("qbind", renames[key[1]], *key[2:])] = bound
            else:
                entries[key] = kwargs
        self._entries = entries
        for old, new in renames.items():
            for earlier, current in list(self._renamed.items()):
                if current == old:
                    self._renamed[earlier] = new
            self._renamed[old] = new
            log.info("server-named queue {old} is now {new}", old=old, new=new)
            for listener in list(self.rename_listeners):
                try:
                    listener(old, new)
                except Exception:
                    log.failure("queue rename listener {listener} failed", listener=listener)

    def declared_queue(self, name: str) -> dict[str, Any] | None:
        """How the queue ``name`` was declared (its keyword arguments), if it was recorded
        and is not server-named (such a queue cannot be declared again under its name)."""
        if name in self._server_named:
            return None
        entry = self._entries.get(("queue", name))
        return dict(entry) if entry is not None else None

    def forget_renames(self) -> None:
        """Every consumer follows its queue's new name now: drop the old names."""
        self._renamed.clear()

    def current_name(self, name: str) -> str:
        """The name a queue declared as ``name`` has now (server-named queues change)."""
        return self._renamed.get(name, name)
