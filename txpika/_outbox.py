"""The outbox: what the core queued, on its way to a transport that may push back.

Shared by the adapters whose transport tells them to stop and go on (Twisted's producer
and consumer, asyncio's ``pause_writing``/``resume_writing``); the blocking adapter writes
under its lock instead. The adapter gives a ``write(bytes)`` callable and says when the
transport pauses (`pause`) and resumes (`resume`).

* While nothing is held back, output is written at once; while the adapter dispatches a
  batch of events (`batching`), small output waits for the end of the batch (`flush` then
  writes it in one piece), so that many acks or publishes made from callbacks go out
  together.
* While the transport is paused, output waits in order in the backlog. A publish made then
  is held as one unit (`hold_publish`): it fires once written, and a caller that gives up
  before that (a timeout, a cancel, the ``raise`` flow policy) drops it, so the message is
  then never sent, never half-sent.
* A large body arrives as memoryview pieces of the caller's bytes; they are copied into
  the transport one batch at a time, only while it is below its high-water mark, so a
  64 MiB message never sits in the transport's buffer whole.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from txpika.connection import Connection

__all__ = ["Outbox", "Unsent"]

#: How many bytes of a large message are handed to the transport at a time.
WRITE_BATCH = 262144
#: The same for a ``write_pieces`` that sends pieces as they are (a ``sendmsg()``): more at
#: once, since what it does not take stays here, uncopied (and at most 512 pieces).
PIECES_BATCH = 2097152
_MAX_PIECES = 512
#: Output pieces that may wait for the end of an event batch before being written.
MAX_BATCHED_CHUNKS = 64

Done = Callable[[None], object]
Fail = Callable[[BaseException], object]


class Unsent:
    """One publish's frames held for a paused transport, and what to call once written."""

    __slots__ = ("chunks", "done", "fail")

    def __init__(self, chunks: list[bytes | memoryview], done: Done, fail: Fail) -> None:
        self.chunks: list[bytes | memoryview] | None = chunks
        self.done = done
        self.fail = fail

    def drop(self) -> None:
        """Never send it (the caller gave up before it was written)."""
        self.chunks = None


class Outbox:
    """Output of one connection's core to its transport; see the module docstring."""

    def __init__(self, core: Connection, write: Callable[[bytes], None]) -> None:
        """``write`` takes bytes. `write_pieces`, when the adapter sets it, takes a batch
        of pieces (the memoryviews of a large body among them) as they are, as a
        ``sendmsg()`` can, and returns how many bytes it took: the rest waits here."""
        self._core = core
        self._write = write
        self.write_pieces: Callable[[list[bytes | memoryview]], int] | None = None
        self.paused = False  # the transport said stop
        self.batching = False  # the adapter is dispatching events
        self._writing = False  # inside write(): the transport may pause us from there
        # Output held while the transport is paused, in order: bytes, memoryview pieces of
        # large bodies, and held publishes.
        self._backlog: deque[Any] = deque()

    @property
    def idle(self) -> bool:
        """True when nothing waits to be written."""
        return not self._backlog and not self._core.pending_chunks

    @property
    def holding(self) -> bool:
        """True while output waits for the transport (paused, or behind what waits)."""
        return bool(self._backlog) or self.paused or self._writing

    def flush(self) -> None:
        """Hand what the core queued to the transport, holding back while it is paused.

        While `batching`, fewer than `MAX_BATCHED_CHUNKS` pieces wait for the end of the
        batch. Small writes go straight through; large bodies go through the backlog.
        """
        core = self._core
        if self.batching and core.pending_chunks < MAX_BATCHED_CHUNKS:
            return  # the adapter flushes once its batch of events is done
        chunks = core.chunks_to_send()
        if chunks:
            backlog = self._backlog
            if backlog or self.paused or self._writing:
                backlog.extend(chunks)
            else:
                for chunk in chunks:
                    if type(chunk) is not bytes:
                        backlog.extend(chunks)
                        break
                else:
                    # One bytes for the transport: a join in C costs less than writing
                    # each piece.
                    self._write(chunks[0] if len(chunks) == 1 else b"".join(chunks))  # type: ignore[arg-type]
        if self._backlog and not self.paused and not self._writing:
            self._write_backlog()

    def before_publish(self) -> bool:
        """Call right before the core queues a publish: True if the transport pushes back,
        and the publish must be held (`hold_publish`); what the core queued before it is
        then moved to the backlog, so that the core's next output is the publish alone."""
        if not (self._backlog or self.paused or self._writing):
            return False
        if self._core.pending_chunks:
            self._backlog.extend(self._core.chunks_to_send())
        return True

    def hold_publish(self, done: Done, fail: Fail) -> Unsent:
        """Hold the publish the core just queued (after `before_publish` said True) as one
        unit: ``done(None)`` runs once it is written, ``fail(error)`` if the connection is
        lost first or `drop_unsent` refuses it."""
        unsent = Unsent(self._core.chunks_to_send(), done, fail)
        backlog = self._backlog
        backlog.append(unsent)
        # While events are dispatched, what callbacks publish is written in batches (and
        # the rest once the dispatching is done), as in flush.
        if not self.paused and not self._writing and (
            not self.batching or len(backlog) >= MAX_BATCHED_CHUNKS
        ):
            self._write_backlog()
        return unsent

    def pause(self) -> None:
        """The transport is over its high-water mark: hold output back."""
        self.paused = True

    def resume(self) -> None:
        """The transport wants more: write what waits."""
        self.paused = False
        if not self._writing:  # (else: called from inside our own write; it goes on)
            self.flush()

    def drop_unsent(self, error: BaseException) -> None:
        """Fail the publishes held for the transport, which are then never sent."""
        for item in self._backlog:
            if type(item) is Unsent and item.chunks is not None:
                item.chunks = None
                item.fail(error)

    def lost(self, error: BaseException) -> None:
        """The transport is gone: fail what waits for it."""
        backlog, self._backlog = self._backlog, deque()
        for item in backlog:
            if type(item) is Unsent and item.chunks is not None:
                item.chunks = None
                item.fail(error)

    def _write_backlog(self) -> None:
        backlog = self._backlog
        write = self._write
        write_pieces = self.write_pieces
        limit = WRITE_BATCH if write_pieces is None else PIECES_BATCH
        self._writing = True  # a transport may pause and resume us from inside write()
        try:
            while backlog and not self.paused:
                # Pieces of a batch go to the adapter as they are (a sendmsg() copies them
                # into the kernel), or joined into one bytes: the only copy of a large
                # body's memoryview pieces before the kernel's.
                batch: list[bytes | memoryview] = []
                written: list[Done] = []
                size = 0
                while backlog and size < limit and len(batch) < _MAX_PIECES:
                    item = backlog.popleft()
                    kind = type(item)
                    if kind is bytes or kind is memoryview:
                        batch.append(item)
                        size += len(item)
                    elif kind is Unsent:
                        if item.chunks is None:
                            continue  # given up: never sent
                        batch.extend(item.chunks)
                        for chunk in item.chunks:
                            size += len(chunk)
                        item.chunks = None
                        written.append(item.done)
                if batch:  # (may call pause() and stop the loop)
                    if len(batch) == 1 and type(batch[0]) is bytes:
                        write(batch[0])
                    elif write_pieces is None:
                        write(b"".join(batch))
                    else:
                        taken = write_pieces(batch)
                        if taken < size:
                            backlog.extendleft(reversed(_after(batch, taken)))
                for done in written:
                    done(None)
        finally:
            self._writing = False


def _after(pieces: list[bytes | memoryview], taken: int) -> list[bytes | memoryview]:
    """What is left of ``pieces`` once their first ``taken`` bytes are gone."""
    for index, piece in enumerate(pieces):
        size = len(piece)
        if taken >= size:
            taken -= size
            continue
        first = memoryview(piece)[taken:] if taken else piece
        return [first, *pieces[index + 1:]]
    return []
