"""The store behind resumable streams and fan-out across server processes.

A *stream* is the stored sequence of one generation's events, addressed by an unguessable id.
The generation's pipeline writes into it through :class:`StoreSink` (the store is just another
consumer of the fan-out, usually with policy ``spill`` so a slow store never slows the model);
readers replay it from any point (``after`` a sequence number, as given by ``Last-Event-ID``)
and then follow it live. Readers never touch the live producer, so a reconnecting client cannot
slow the generation down.

Implementations: :class:`MemoryStore` (one process; bounded per stream and in total) and
:class:`RedisStore` (Redis Streams through ``coredis``: several server processes share streams,
a client may reconnect to another process and resume).

Contract every implementation keeps (``tests/test_stores.py`` runs the same tests on each):

* ``append`` stores events in ``seq`` order; ``read(stream_id, after, limit)`` returns at most
  ``limit`` events with ``seq > after``, in order: replay is served in pieces, never as one
  message of the whole history.
* ``wait(stream_id, after, timeout)`` returns events after ``after`` as soon as there are any
  (or ``[]`` at the timeout, or at once when the stream has ended and nothing follows ``after``):
  what live following is built on. Cancelling it is safe.
* A stream ends when a terminal event (``Done``/``Error``) is appended; ``info`` tells
  ``ended``. ``request_cancel`` marks a stream cancelled (the process that runs the generation
  sees it via ``cancel_requested`` and stops it; this works across processes with Redis).
* ``touch`` records reader activity; ``info(...).last_reader_at`` lets the owner cancel a
  generation nobody listens to.
* Owner lease: a stream created with ``lease=`` seconds has an owner (the process that runs its
  generation), alive while it calls ``renew_lease`` within that time. A stream that has not
  ended and whose lease ran out is *orphaned* (``info(...).orphaned``: the owner crashed, or
  lost the store for longer than the lease); any process may end it with ``end_if_orphaned``,
  which appends the given terminal event only if it still is (atomically, so two readers
  cannot both end it). Leases are kept by the store (in Redis: a key with a TTL, which an AOF
  restart keeps), so a crash of the owner, of the store, or of both is seen the same way.
* Errors: :class:`StoreUnavailable` (the store cannot be reached: retry later with
  :class:`pipeline.Backoff`), :class:`StreamEnded` (an append after the end).
* Every method is safe to call from several tasks at once; ``aclose`` is idempotent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol, runtime_checkable

import attrs

from .. import Event, LLMPipeError

__all__ = [
    "DEFAULT_WAIT_LIMIT",
    "StoreError",
    "StoreFull",
    "StoreUnavailable",
    "StreamEnded",
    "StreamInfo",
    "StreamNotFound",
    "StreamStore",
]

#: How many events :meth:`StreamStore.wait` returns at most when no ``limit`` is given.
DEFAULT_WAIT_LIMIT: Final = 1000


class StoreError(LLMPipeError):
    """Base of store errors."""

    kind = "store"


class StreamNotFound(StoreError, LookupError):
    """No stream with that id (never created, expired or deleted)."""


class StoreFull(StoreError):
    """A budget of the store is exhausted: the stream's own budget (events or bytes), or the
    store's total when nothing can be evicted. Nothing of the refused batch was stored."""

    kind = "overflow"


class StoreUnavailable(StoreError):
    """The store could not be reached or did not answer (a connection refused or reset, a
    timeout). Transient: whether the operation took effect is unknown, so a writer that retries
    checks :meth:`StreamStore.info` first (see :class:`StoreSink`)."""

    retryable = True


class StreamEnded(StoreError):
    """An ``append`` to a stream that has already ended (its writer, or a process that found
    it orphaned, stored its terminal event). Nothing of the batch was stored."""


@attrs.frozen
class StreamInfo:
    """What a store knows about one stream. Times are UNIX seconds (wall clock: shared by
    processes)."""

    stream_id: str
    created_at: float
    last_seq: int
    ended: bool
    cancel_requested: bool
    last_reader_at: float | None
    events: int
    #: Not ended, created with a lease, and the lease ran out: no live owner.
    orphaned: bool = False


@runtime_checkable
class StreamStore(Protocol):
    async def create(self, stream_id: str, *, lease: float | None = None) -> None:
        """Create an empty stream; ``ValueError`` if the id exists. With ``lease`` (seconds) the
        caller owns it and must :meth:`renew_lease` within that time or it becomes orphaned."""
        ...

    async def renew_lease(self, stream_id: str, lease: float) -> None:
        """The owner is alive: the stream is not orphaned for ``lease`` more seconds.
        Raises :class:`StreamNotFound`; does nothing to a stream that has ended."""
        ...

    async def end_if_orphaned(self, stream_id: str, event: Event) -> bool:
        """Append ``event`` (terminal; its ``seq`` is set to the next one) if the stream is
        orphaned, atomically; ``True`` if this call ended it. Raises :class:`StreamNotFound`."""
        ...

    async def append(self, stream_id: str, events: Sequence[Event]) -> None:
        """Append stamped events (``seq`` increasing). Raises :class:`StreamNotFound`."""
        ...

    async def read(self, stream_id: str, after: int, limit: int) -> list[Event]:
        """Up to ``limit`` events with ``seq > after``, in order."""
        ...

    async def wait(
        self,
        stream_id: str,
        after: int,
        timeout: float,  # noqa: ASYNC109 (a server-side XREAD BLOCK with Redis)
        limit: int = DEFAULT_WAIT_LIMIT,
    ) -> list[Event]:
        """Like :meth:`read`, but waits up to ``timeout`` s for the first event after ``after``.

        Returns at most ``limit`` events; ``[]`` at the timeout, at once when the stream has
        ended and nothing follows ``after``, and possibly early when a cancel is requested."""
        ...

    async def info(self, stream_id: str) -> StreamInfo:
        """Raises :class:`StreamNotFound`."""
        ...

    async def touch(self, stream_id: str) -> None:
        """Record that a reader is (still) following the stream."""
        ...

    async def request_cancel(self, stream_id: str) -> None:
        """Ask the generation to stop (from any process)."""
        ...

    async def delete(self, stream_id: str) -> None:
        """Forget the stream and its events (idempotent)."""
        ...

    async def aclose(self) -> None: ...
