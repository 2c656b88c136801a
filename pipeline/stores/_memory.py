"""A :class:`StreamStore` in this process's memory, bounded per stream and in total."""

from __future__ import annotations

import bisect
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from types import TracebackType
from typing import Final

import attrs
import trio

from .. import ConfigError, Event, is_terminal
from ._base import DEFAULT_WAIT_LIMIT, StoreFull, StreamEnded, StreamInfo, StreamNotFound

__all__ = ["ALLOCATOR_SLACK", "EVENT_OVERHEAD", "MemoryStore", "stored_nbytes"]

#: Bytes counted per stored event besides the event object and its strings: its two list slots
#: (``events`` and ``seqs``, 8 bytes each) and its ``seq`` (an int object of 28 bytes, 32 as
#: allocated; only 0..256 are shared by CPython, so every stored seq is counted).
EVENT_OVERHEAD: Final = 2 * 8 + 32
#: What the store counts per byte its objects take, for the allocators' slack: once streams are
#: evicted, their freed blocks stay in pymalloc's arenas among the survivors', and the growing
#: ``events``/``seqs`` lists leave holes in malloc's heap. Measured with
#: ``benchmarks/bench_store_memory.py`` (80 unread generations, budget 256 MiB): RSS grew 1.28x
#: what the objects take; so the budget, counted this way, is what the process grows by.
ALLOCATOR_SLACK: Final = 1.3
_MiB: Final = 1024 * 1024
_ALIGN: Final = 16  # pymalloc hands out blocks in multiples of 16 bytes (64-bit CPython >= 3.8)
# Per event class: the fields that hold their own objects (str and int); ``type`` is the class's
# shared literal and ``seq`` is in EVENT_OVERHEAD. Filled on first use of each class.
_OWN_FIELDS: dict[type, tuple[str, ...]] = {}


def _allocated(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def stored_nbytes(event: Event) -> int:
    """Bytes of memory the :class:`MemoryStore` holds for ``event``: the event object and each
    of its strings as allocated (``sys.getsizeof`` rounded up to pymalloc's 16-byte blocks;
    a non-ASCII string's UTF-8 copy included when CPython made one), ints past the shared
    small ones (32 bytes each), plus :data:`EVENT_OVERHEAD`.

    Measured, not estimated: a 5-character ``TextDelta`` counts 64 + 64 + 48 = 176 bytes, and
    ``tests/test_store_memory.py`` checks that what a filled store counts is what the process
    grew by. Objects shared with others (interned strings, small ints) are counted anyway, so
    the figure errs on the high side.
    """
    cls = type(event)
    names = _OWN_FIELDS.get(cls)
    if names is None:
        names = tuple(f.name for f in attrs.fields(cls) if f.name not in ("type", "seq"))
        _OWN_FIELDS[cls] = names
    total = _allocated(sys.getsizeof(event)) + EVENT_OVERHEAD
    for name in names:
        value = getattr(event, name)
        if isinstance(value, str):
            total += _allocated(sys.getsizeof(value))
        elif type(value) is int and not -5 <= value <= 256:
            total += 32
    return total


def check_batch(stream_id: str, last_seq: int, events: Sequence[Event]) -> None:
    """Refuse (``ValueError``) a batch whose ``seq`` do not increase past ``last_seq`` or that
    has something after a terminal event. Shared by the stores; nothing is stored on error."""
    prev = last_seq
    for i, ev in enumerate(events):
        if ev.seq <= prev:
            raise ValueError(
                f"stream {stream_id!r}: events must be stamped with increasing seq "
                f"(got seq {ev.seq} after {prev})"
            )
        prev = ev.seq
        if is_terminal(ev) and i != len(events) - 1:
            raise ValueError(f"stream {stream_id!r}: nothing may follow a terminal event")


def check_read_args(after: int, limit: int) -> None:
    if after < 0:
        raise ValueError(f"after must be >= 0, got {after}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")


def check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")


@attrs.define(eq=False)
class _Stream:
    created_at: float  # wall clock (StreamInfo)
    active_at: float  # trio clock: create or last append (idle expiry)
    events: list[Event] = attrs.Factory(list)
    seqs: list[int] = attrs.Factory(list)
    counted_events: int = 0  # non-terminal events (the per-stream event budget)
    nbytes: int = 0  # bytes of non-terminal events (per-stream and total byte budgets)
    last_seq: int = 0
    ended: bool = False
    ended_at: float = 0.0  # trio clock
    cancel_requested: bool = False
    last_reader_at: float | None = None
    lease_until: float | None = None  # trio clock; None: no owner lease
    lot: trio.lowlevel.ParkingLot = attrs.Factory(trio.lowlevel.ParkingLot)
    gone: bool = False

    def read(self, after: int, limit: int) -> list[Event]:
        start = bisect.bisect_right(self.seqs, after)
        return self.events[start : start + limit]

    def orphaned(self) -> bool:
        return (
            not self.ended
            and self.lease_until is not None
            and trio.current_time() >= self.lease_until
        )


class MemoryStore:
    """Streams kept in this process's memory (one server process; tests; the CLI).

    Budgets (all checked before anything of a batch is stored, so a refused batch leaves no
    trace):

    * ``max_events_per_stream`` / ``max_bytes_per_stream``: one stream's events, and the memory
      they take (:func:`stored_nbytes`: the objects as allocated, not just their text, times
      :data:`ALLOCATOR_SLACK`), so ``max_total_bytes`` is what the process's RSS grows by. An
      ``append`` that would pass either raises :class:`StoreFull`; the stream is not changed. The
      terminal event (``Done``/``Error``) is exempt, so a stream can always be ended (there is
      one per stream).
    * ``max_streams`` / ``max_total_bytes``: the whole store. When ``create`` or ``append``
      would pass them, expired streams are dropped, then the *ended* streams are evicted,
      oldest end first; if that is not enough, :class:`StoreFull` is raised. Streams that are
      still being written are never evicted.
    * ``ttl_after_end``: an ended stream is forgotten that many seconds after its end;
      ``max_idle`` (``None``: never): a stream that was not appended to for that long (its
      writer is gone) is forgotten too.

    Choosing budgets: a stream of an LLM answer is a few thousand events and tens of KiB, so the
    per-stream defaults (100k events, 32 MiB) only stop runaways; ``max_total_bytes`` is the
    memory you grant the store (about ``max_streams`` times a typical stream, plus headroom);
    ``ttl_after_end`` is how long a client may take to reconnect and still resume.

    Clocks: :class:`StreamInfo` times are wall clock (``time.time()``, as with Redis); expiry
    and ``wait`` timeouts use trio's clock, so ``trio.testing.MockClock`` drives them.

    Concurrency: every method may be called from several tasks at once; a batch is stored
    atomically (no checkpoint between checking and storing). Any number of tasks may ``wait``
    on one stream; each is woken as soon as something is appended, the stream ends, a cancel is
    requested, or the stream is deleted/evicted (then :class:`StreamNotFound`). Cancelling a
    ``wait`` is safe and loses nothing (nothing is consumed by reading). After :meth:`aclose`
    every method raises ``trio.ClosedResourceError``.
    """

    def __init__(
        self,
        *,
        max_events_per_stream: int = 100_000,
        max_bytes_per_stream: int = 32 * _MiB,
        max_streams: int = 1000,
        max_total_bytes: int = 256 * _MiB,
        ttl_after_end: float = 3600.0,
        max_idle: float | None = 24 * 3600.0,
    ) -> None:
        for name, value in (
            ("max_events_per_stream", max_events_per_stream),
            ("max_bytes_per_stream", max_bytes_per_stream),
            ("max_streams", max_streams),
            ("max_total_bytes", max_total_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name}: expected an int, got {value!r}")
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        check_positive("ttl_after_end", ttl_after_end)
        if max_idle is not None:
            check_positive("max_idle", max_idle)
        self.max_events_per_stream = max_events_per_stream
        self.max_bytes_per_stream = max_bytes_per_stream
        self.max_streams = max_streams
        self.max_total_bytes = max_total_bytes
        self.ttl_after_end = float(ttl_after_end)
        self.max_idle = None if max_idle is None else float(max_idle)
        self._streams: dict[str, _Stream] = {}
        self._ended: OrderedDict[str, _Stream] = OrderedDict()  # in order of their end
        self._total_bytes = 0
        self._closed = False

    # -- introspection ---------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        """Bytes counted against ``max_total_bytes`` now."""
        return self._total_bytes

    def __len__(self) -> int:
        """Streams held now (including expired ones not yet swept)."""
        return len(self._streams)

    # -- the StreamStore protocol ------------------------------------------------------------

    async def create(self, stream_id: str, *, lease: float | None = None) -> None:
        """Create an empty stream (``ValueError`` if it exists); ``lease``: seconds of trio's
        clock the owner has to :meth:`renew_lease` (see :class:`StreamStore`)."""
        if lease is not None:
            check_positive("lease", lease)
        await self._enter()
        existing = self._streams.get(stream_id)
        if existing is not None:
            if not self._expired(existing, trio.current_time()):
                raise ValueError(f"stream {stream_id!r} already exists")
            self._drop(stream_id)
        if len(self._streams) >= self.max_streams:
            self._sweep()
            while len(self._streams) >= self.max_streams and self._ended:
                self._evict_oldest_ended()
            if len(self._streams) >= self.max_streams:
                raise StoreFull(
                    f"memory store: {len(self._streams)} streams are being written "
                    f"(max_streams={self.max_streams})"
                )
        now = trio.current_time()
        s = _Stream(created_at=time.time(), active_at=now)
        if lease is not None:
            s.lease_until = now + lease
        self._streams[stream_id] = s

    async def renew_lease(self, stream_id: str, lease: float) -> None:
        check_positive("lease", lease)
        await self._enter()
        s = self._get(stream_id)
        if not s.ended:
            s.lease_until = trio.current_time() + lease

    async def end_if_orphaned(self, stream_id: str, event: Event) -> bool:
        if not is_terminal(event):
            raise ValueError(f"end_if_orphaned needs a terminal event, got {event!r}")
        await self._enter()
        s = self._get(stream_id)
        if not s.orphaned():
            return False
        self._store(stream_id, s, [attrs.evolve(event, seq=s.last_seq + 1)], 0, 0)
        return True

    async def append(self, stream_id: str, events: Sequence[Event]) -> None:
        """Store ``events`` (one atomic batch).

        Raises :class:`StreamNotFound`, :class:`StoreFull` (see the class docstring),
        :class:`StreamEnded` if the stream has already ended, ``ValueError`` if the ``seq`` do not
        increase past the stream's last one or something follows a terminal event.
        """
        await self._enter()
        s = self._get(stream_id)
        if not events:
            return
        if s.ended:
            raise StreamEnded(f"stream {stream_id!r} has ended; nothing may be appended")
        check_batch(stream_id, s.last_seq, events)
        terminal = is_terminal(events[-1])
        counted = events[:-1] if terminal else events
        add_bytes = int(sum(map(stored_nbytes, counted)) * ALLOCATOR_SLACK)
        if s.counted_events + len(counted) > self.max_events_per_stream:
            raise StoreFull(
                f"stream {stream_id!r}: {s.counted_events} events stored, "
                f"{len(counted)} more would pass max_events_per_stream="
                f"{self.max_events_per_stream}"
            )
        if s.nbytes + add_bytes > self.max_bytes_per_stream:
            raise StoreFull(
                f"stream {stream_id!r}: {s.nbytes} bytes stored, {add_bytes} more would pass "
                f"max_bytes_per_stream={self.max_bytes_per_stream}"
            )
        if self._total_bytes + add_bytes > self.max_total_bytes:
            self._sweep()
            while self._total_bytes + add_bytes > self.max_total_bytes and self._ended:
                self._evict_oldest_ended()
            if self._total_bytes + add_bytes > self.max_total_bytes:
                raise StoreFull(
                    f"memory store: {self._total_bytes} bytes held by streams being written, "
                    f"{add_bytes} more would pass max_total_bytes={self.max_total_bytes}"
                )
        self._store(stream_id, s, events, len(counted), add_bytes)

    def _store(
        self, stream_id: str, s: _Stream, events: Sequence[Event], counted: int, nbytes: int
    ) -> None:
        """Store a checked batch (no checkpoint) and wake the stream's waiters."""
        s.events.extend(events)
        s.seqs.extend(ev.seq for ev in events)
        s.counted_events += counted
        s.nbytes += nbytes
        self._total_bytes += nbytes
        s.last_seq = events[-1].seq
        now = trio.current_time()
        s.active_at = now
        if is_terminal(events[-1]):
            s.ended = True
            s.ended_at = now
            self._ended[stream_id] = s
        s.lot.unpark_all()

    async def read(self, stream_id: str, after: int, limit: int) -> list[Event]:
        check_read_args(after, limit)
        await self._enter()
        return self._get(stream_id).read(after, limit)

    async def wait(
        self,
        stream_id: str,
        after: int,
        timeout: float,  # noqa: ASYNC109 (a server-side XREAD BLOCK with Redis)
        limit: int = DEFAULT_WAIT_LIMIT,
    ) -> list[Event]:
        """Events after ``after`` as soon as there are any (see :class:`StreamStore`).

        ``timeout`` is in seconds of trio's clock (``math.inf``: no timeout; ``<= 0``: do not
        wait). Returns ``[]`` early when a cancel is requested or at the timeout; raises
        :class:`StreamNotFound` if the stream is deleted or evicted meanwhile.
        """
        check_read_args(after, limit)
        await self._enter()
        s = self._get(stream_id)
        events = s.read(after, limit)
        if events or s.ended or timeout <= 0:
            return events
        with trio.move_on_after(timeout):
            while True:
                cancel_before = s.cancel_requested
                await s.lot.park()
                if self._closed:
                    raise trio.ClosedResourceError("the store was closed")
                if s.gone:
                    raise StreamNotFound(f"stream {stream_id!r} was deleted")
                events = s.read(after, limit)
                if events or s.ended or s.cancel_requested != cancel_before:
                    return events
        return []

    async def info(self, stream_id: str) -> StreamInfo:
        await self._enter()
        s = self._get(stream_id)
        return StreamInfo(
            stream_id=stream_id,
            created_at=s.created_at,
            last_seq=s.last_seq,
            ended=s.ended,
            cancel_requested=s.cancel_requested,
            last_reader_at=s.last_reader_at,
            events=len(s.events),
            orphaned=s.orphaned(),
        )

    async def touch(self, stream_id: str) -> None:
        await self._enter()
        self._get(stream_id).last_reader_at = time.time()

    async def request_cancel(self, stream_id: str) -> None:
        """Mark the stream cancelled (idempotent) and wake its waiters."""
        await self._enter()
        s = self._get(stream_id)
        if not s.cancel_requested:
            s.cancel_requested = True
            s.lot.unpark_all()

    async def delete(self, stream_id: str) -> None:
        await self._enter()
        self._drop(stream_id)

    async def aclose(self) -> None:
        """Forget every stream and wake every waiter (they raise ``ClosedResourceError``).
        Idempotent."""
        if not self._closed:
            self._closed = True
            for stream_id in list(self._streams):
                self._drop(stream_id)
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<MemoryStore streams={len(self._streams)} bytes={self._total_bytes}>"

    # -- internals ---------------------------------------------------------------------------

    async def _enter(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("the store was closed")

    def _expired(self, s: _Stream, now: float) -> bool:
        if s.ended:
            return now - s.ended_at >= self.ttl_after_end
        return self.max_idle is not None and now - s.active_at >= self.max_idle

    def _get(self, stream_id: str) -> _Stream:
        s = self._streams.get(stream_id)
        if s is not None and self._expired(s, trio.current_time()):
            self._drop(stream_id)
            s = None
        if s is None:
            raise StreamNotFound(f"no stream {stream_id!r} (never created, expired or deleted)")
        return s

    def _drop(self, stream_id: str) -> None:
        s = self._streams.pop(stream_id, None)
        if s is None:
            return
        self._ended.pop(stream_id, None)
        self._total_bytes -= s.nbytes
        s.gone = True
        s.lot.unpark_all()

    def _sweep(self) -> None:
        now = trio.current_time()
        for stream_id, s in list(self._streams.items()):
            if self._expired(s, now):
                self._drop(stream_id)

    def _evict_oldest_ended(self) -> None:
        stream_id = next(iter(self._ended))
        self._drop(stream_id)
