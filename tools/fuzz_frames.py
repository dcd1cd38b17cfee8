#!/usr/bin/env python3
"""Fuzz txpika's frame decoder and sans-IO connection core.

Usage::

    python tools/fuzz_frames.py --runs 1000000            # atheris if installed, else random
    python tools/fuzz_frames.py --engine random --runs 200000 --seed 7
    python tools/fuzz_frames.py --target connection --time-limit 600

Each input is one control byte and the bytes to feed. The control byte picks the dialect
(bit 0), the target (bits 1-2: 0-2 the `FrameDecoder`, 3 an open `Connection`, unless
``--target`` forces one; ``--target server`` fuzzes the `txpika.testing.MemoryBroker`'s
server side instead, see tools/fuzz_server.py), the decoder's ``frame_max`` (bits 3-4) and
how the bytes are cut into ``receive_data`` calls (bits 5-7). The seed corpus is every frame
of tests/frame_fixtures.py and the server frames the connection fuzzing starts from, under
several control bytes.

A *crash* is anything but the expected outcomes: the decoder may return frames or NEED_DATA,
or raise `FrameDecodeError` (and then raise that same error again); the connection core may
return events or NEED_DATA and must never raise, and a protocol error it reports must come
with a ``connection.close`` carrying its reply code. Every crash is printed with its
traceback once per distinct location, and its input is saved in ``--crash-dir``. A call that
takes longer than ``--slow`` seconds is reported too. The summary gives the number of inputs,
the time, the inputs per second and the crashes; the exit status is 1 if there was a crash.

Engines: ``atheris`` (coverage-guided libFuzzer, ``pip install atheris``; txpika is
instrumented) or ``random`` (mutations of the seed corpus with the mutators of
tests/frame_fixtures.py, deterministic for a given ``--seed``).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
for _path in (str(ROOT / "tests"), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

FRAME_MAX = [131072, 4096, 0, 131072]
CHUNKING = [0, 1, 2, 3, 7, 64, -1, -2]  # 0 whole, n bytes at a time, <0 irregular cuts
TARGETS = ("both", "decoder", "connection", "server")


class Harness:
    """The fuzz target: `run` takes one input; it records crashes instead of raising."""

    def __init__(self, target: str, crash_dir: Path, slow: float, stop_on_crash: bool,
                 runs: int, quiet: bool = False) -> None:
        # Imported here so that atheris can instrument txpika first.
        import frame_fixtures

        from txpika import events
        from txpika.connection import NEED_DATA
        from txpika.errors import ProtocolError
        from txpika.frames import (
            BodyFrame,
            FrameDecodeError,
            FrameDecoder,
            HeaderFrame,
            HeartbeatFrame,
            MethodFrame,
        )

        self.ff = frame_fixtures
        self.events = events
        self.NEED_DATA = NEED_DATA
        self.ProtocolError = ProtocolError
        self.FrameDecodeError = FrameDecodeError
        self.FrameDecoder = FrameDecoder
        self.frame_types = (MethodFrame, HeaderFrame, BodyFrame, HeartbeatFrame)
        self.MethodFrame = MethodFrame
        self.event_types = tuple(getattr(events, n) for n in events.__all__ if n != "Event")
        self.dialects = [frame_fixtures.DIALECTS["0-9-1"], frame_fixtures.DIALECTS["0-8"]]
        self.target = target
        self.crash_dir = crash_dir
        self.slow = slow
        self.stop_on_crash = stop_on_crash
        self.runs = runs
        self.quiet = quiet
        self.count = 0
        self.decoder_inputs = 0
        self.connection_inputs = 0
        self.server: Any = None
        if target == "server":
            from fuzz_server import ServerTarget

            self.server = ServerTarget()
        self.crashes: dict[str, list[Any]] = {}  # signature -> [count, first input, text]
        self.slow_inputs: list[tuple[float, bytes]] = []
        self.slowest = 0.0
        self.started = time.perf_counter()
        self.last_report = self.started
        self.report_every = 30.0
        self.on_done: Callable[[], None] | None = None

    # -- one input ------------------------------------------------------------------------

    def run(self, data: bytes) -> None:
        self.count += 1
        control, payload = (data[0], data[1:]) if data else (0, b"")
        dialect = control & 1
        parts = self._cut(payload, CHUNKING[control >> 5])
        try:
            if self.server is not None:
                self.connection_inputs += 1
                self.server.run(parts, self._timed)
            elif self.target == "decoder" or (self.target == "both" and (control >> 1) & 3 != 3):
                self.decoder_inputs += 1
                self._decoder(dialect, FRAME_MAX[(control >> 3) & 3], parts)
            else:
                self.connection_inputs += 1
                self._connection(dialect, parts)
        except Exception as exc:
            self._crash(data, exc)
        now = time.perf_counter()
        if not self.quiet and now - self.last_report >= self.report_every:
            self.last_report = now
            self.progress()
        if self.count == self.runs and self.on_done is not None:
            self.on_done()

    @staticmethod
    def _cut(payload: bytes, how: int) -> list[bytes]:
        if how == 0 or len(payload) < 2:
            return [payload]
        if how > 0:
            return [payload[i:i + how] for i in range(0, len(payload), how)]
        # Irregular cuts derived from the bytes themselves (deterministic per input).
        cuts, pos, step = [], 0, 1 + (len(payload) % 5)
        while pos < len(payload):
            cuts.append(payload[pos:pos + step])
            step = 1 + (payload[pos] % 13) if how == -1 else 1 + (step * 7) % 11
            pos += len(cuts[-1])
        return cuts

    def _timed(self, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return call()
        finally:
            elapsed = time.perf_counter() - started
            if elapsed > self.slowest:
                self.slowest = elapsed
            if elapsed > self.slow:
                raise SlowCall(f"a call took {elapsed:.3f} s")

    def _decoder(self, dialect_index: int, frame_max: int, parts: list[bytes]) -> None:
        d = self.dialects[dialect_index]
        dec = self.FrameDecoder(d, frame_max)
        for part in parts:
            dec.receive_data(part)
            while True:
                try:
                    frame = self._timed(dec.next_frame)
                except self.FrameDecodeError as exc:
                    if exc.reply_code not in (501, 502, 503):
                        raise Invariant(f"FrameDecodeError with reply code {exc.reply_code}") \
                            from exc
                    try:
                        dec.next_frame()
                    except self.FrameDecodeError as again:
                        if again is not exc:
                            raise Invariant("a broken decoder raised a different error") \
                                from again
                    else:
                        raise Invariant("a broken decoder returned a frame")
                    return
                if frame is self.NEED_DATA:
                    break
                if not isinstance(frame, self.frame_types):
                    raise Invariant(f"next_frame returned {frame!r}")

    def _connection(self, dialect_index: int, parts: list[bytes]) -> None:
        name = "0-9-1" if dialect_index == 0 else "0-8"
        conn, _ = self.ff.open_connection(name, consume=True, confirm=name == "0-9-1")
        for part in parts:
            conn.receive_data(part)
            while True:
                event = self._timed(conn.next_event)
                if event is self.NEED_DATA:
                    break
                if not isinstance(event, self.event_types):
                    raise Invariant(f"next_event returned {event!r}")
                if isinstance(event, self.events.ConnectionClosed):
                    error = event.error
                    if isinstance(error, self.ProtocolError) and error.reply_code:
                        self._check_close(conn, error, self.dialects[dialect_index])
            conn.data_to_send()

    def _check_close(self, conn: Any, error: Any, dialect: Any) -> None:
        dec = self.FrameDecoder(dialect, 0)
        dec.receive_data(conn.data_to_send())
        last = None
        while (frame := dec.next_frame()) is not self.NEED_DATA:
            last = frame
        if not (isinstance(last, self.MethodFrame) and last.channel == 0
                and last.method.NAME == "connection.close"
                and last.method.reply_code == error.reply_code):
            raise Invariant(f"{error!r} reported, but the last frame written was {last!r}")

    # -- reporting ------------------------------------------------------------------------

    def _crash(self, data: bytes, exc: BaseException) -> None:
        tb = traceback.extract_tb(exc.__traceback__)
        inner = [f for f in tb if "txpika" in f.filename] or tb
        where = f"{Path(inner[-1].filename).name}:{inner[-1].lineno}" if inner else "?"
        signature = f"{type(exc).__name__} at {where}"
        if isinstance(exc, SlowCall):
            self.slow_inputs.append((self.slowest, data))
        entry = self.crashes.get(signature)
        if entry is None:
            text = "".join(traceback.format_exception(exc))
            self.crashes[signature] = [1, data, text]
            self.crash_dir.mkdir(parents=True, exist_ok=True)
            path = self.crash_dir / f"crash-{hashlib.sha1(data).hexdigest()[:16]}"
            path.write_bytes(data)
            print(f"\n=== CRASH #{len(self.crashes)}: {signature} (input #{self.count}, "
                  f"{len(data)} bytes, saved as {path})\ninput: {data!r}\n{text}", flush=True)
        else:
            entry[0] += 1
        if self.stop_on_crash:
            raise exc

    def progress(self) -> None:
        elapsed = time.perf_counter() - self.started
        crashes = sum(entry[0] for entry in self.crashes.values())
        print(f"#{self.count} inputs in {elapsed:.1f} s ({self.count / elapsed:,.0f}/s), "
              f"{crashes} crashes", flush=True)

    def summary(self) -> int:
        elapsed = time.perf_counter() - self.started
        crashes = sum(entry[0] for entry in self.crashes.values())
        print("\n=== txpika frame fuzzing summary ===")
        print(f"inputs:          {self.count} ({self.decoder_inputs} decoder, "
              f"{self.connection_inputs} connection)")
        print(f"time:            {elapsed:.1f} s")
        print(f"inputs/sec:      {self.count / elapsed:,.0f}" if elapsed else "inputs/sec: -")
        print(f"slowest call:    {self.slowest * 1000:.2f} ms")
        print(f"crashes:         {crashes} ({len(self.crashes)} distinct)")
        for signature, (count, data, _) in self.crashes.items():
            print(f"  {count} x {signature}; first input {data[:120]!r}")
        print("result:          " + ("CRASHES FOUND" if self.crashes else "no crash"), flush=True)
        return 1 if self.crashes else 0


class Invariant(Exception):
    """The target returned something it must not."""


class SlowCall(Exception):
    """One decoder or core call took longer than --slow seconds."""


# ---------------------------------------------------------------------------------------------
# Seed corpus and engines


def seed_inputs(target: str = "both") -> list[bytes]:
    import frame_fixtures as ff

    inputs = []
    if target == "server":
        from fuzz_server import client_corpus

        streams = client_corpus()
        return [bytes([chunking]) + stream for stream in [*streams, b"".join(streams)]
                for chunking in (0, 1 << 5, 6 << 5)]
    for dialect_index, name in enumerate(("0-9-1", "0-8")):
        frames = [f.data for f in ff.by_dialect(name)]
        server = ff.server_corpus(name)
        streams = [*frames, b"".join(frames), *(a + b for a, b in itertools.pairwise(frames))]
        for stream in streams:
            for chunking in (0, 1 << 5, 6 << 5):
                inputs.append(bytes([dialect_index | chunking]) + stream)  # decoder
        for stream in [*server, b"".join(server[:4])]:
            for chunking in (0, 6 << 5):
                inputs.append(bytes([dialect_index | 6 | chunking]) + stream)  # connection
    return inputs


def run_random(harness: Harness, runs: int, seed: int, time_limit: float) -> None:
    import frame_fixtures as ff

    rng = random.Random(seed)
    seeds = seed_inputs(harness.target)
    deadline = time.perf_counter() + time_limit if time_limit else None
    for data in seeds[:runs]:
        harness.run(data)
    for _ in range(max(0, runs - len(seeds))):
        if deadline is not None and time.perf_counter() > deadline:
            break
        if rng.random() < 0.05:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 80)))
        else:
            base = b"".join(rng.choice(seeds)[1:] for _ in range(rng.randint(1, 3)))
            control = rng.choice(seeds)[0] if rng.random() < 0.8 else rng.randrange(256)
            data = bytes([control]) + ff.mutate(rng, base, seeds)
        harness.run(data)


def run_atheris(harness: Harness, runs: int, seed: int, time_limit: float, corpus: Path,
                max_len: int) -> None:
    import atheris

    corpus.mkdir(parents=True, exist_ok=True)
    for data in seed_inputs(harness.target):
        (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)
    argv = [sys.argv[0], f"-runs={runs}", f"-seed={seed}", f"-max_len={max_len}",
            "-rss_limit_mb=4096", "-timeout=30", "-print_final_stats=1"]
    if time_limit:
        argv.append(f"-max_total_time={int(time_limit)}")
    argv.append(str(corpus))

    def done() -> None:
        # libFuzzer exits the process right after the last run without returning here.
        sys.stdout.flush()
        status = harness.summary()
        sys.stdout.flush()
        os._exit(status)

    harness.on_done = done
    atheris.Setup(argv, harness.run)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000, help="number of inputs")
    parser.add_argument("--engine", choices=["auto", "atheris", "random"], default="auto")
    parser.add_argument("--target", choices=TARGETS, default="both")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=0,
                        help="stop after this many seconds (0: none)")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="atheris corpus directory (default: a temporary one)")
    parser.add_argument("--crash-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "txpika-fuzz-crashes")
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--slow", type=float, default=1.0,
                        help="report a call slower than this many seconds as a crash")
    parser.add_argument("--stop-on-crash", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)

    engine = args.engine
    if engine == "auto":
        try:
            import atheris
        except ImportError:
            engine = "random"
        else:
            engine = "atheris"
    if engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=["txpika"]):
            import txpika.connection
            import txpika.frames
            if args.target == "server":
                import txpika.testing._core  # noqa: F401
    print(f"engine {engine}, target {args.target}, {args.runs} runs, seed {args.seed}",
          flush=True)
    harness = Harness(args.target, args.crash_dir, args.slow, args.stop_on_crash, args.runs,
                      args.quiet)
    if engine == "atheris":
        corpus = args.corpus or Path(tempfile.mkdtemp(prefix="txpika-fuzz-corpus-"))
        run_atheris(harness, args.runs, args.seed, args.time_limit, corpus, args.max_len)
    else:
        run_random(harness, args.runs, args.seed, args.time_limit)
    return harness.summary()


if __name__ == "__main__":
    sys.exit(main())
