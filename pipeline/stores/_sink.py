"""The sink that writes a pipeline's events into a :class:`StreamStore`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import trio

from .. import (
    Backoff,
    ConfigError,
    ConsumerGone,
    Error,
    Event,
    EventReceiver,
    TextDelta,
    is_terminal,
)
from ._base import (
    StoreError,
    StoreFull,
    StoreUnavailable,
    StreamEnded,
    StreamInfo,
    StreamNotFound,
    StreamStore,
)

__all__ = ["StoreSink"]


@attrs.define(eq=False)
class StoreSink:
    """A pipeline :class:`~pipeline.Sink` that appends every event it reads to ``stream_id``.

    Route it with policy ``spill`` (``Route(StoreSink(store, sid), policy="spill")``): a slow
    store then never slows the model, and nothing is lost (``block`` is also lossless; the
    dropping policies leave gaps that resuming readers would never see).

    Batching: it reads with :meth:`~pipeline.EventReceiver.receive_batch` (one event, then what
    is already queued), up to ``batch_max`` events, and stores them with one ``append`` (one
    Redis round trip). A store that lags therefore catches up in large batches. ``batch_max``
    bounds one request (and what a failed append loses); 256 is a good default.

    Events are stored as stamped by the runner. An unstamped event (``seq == 0``: a channel's
    ``Dropped`` notice) is skipped, except a terminal one (a channel's ``overflow`` error), which
    is stored with the next number.

    Ending: the stream ends with the pipeline's terminal event. If ``consume`` stops before that
    (cancelled, the store full, the channel closed early), it still tries, shielded, for at most
    ``end_timeout`` seconds, to append an :class:`~pipeline.Error` (kind ``"cancelled"``,
    ``"overflow"`` or ``"incomplete"``) so that readers waiting on the stream learn its end;
    then the original exception propagates. If the stream was deleted (:class:`StreamNotFound`)
    the sink raises :class:`~pipeline.ConsumerGone`: nobody wants the stream anymore.
    :class:`StoreFull` and other store errors propagate (the route's ``on_failure`` decides
    whether that stops the generation).

    ``cancel_event`` (a function, called at that moment) gives the ``Error`` stored when the
    sink is cancelled, so the owner can say why (shut down, deleted, idle) and whether a retry
    makes sense; by default kind ``"cancelled"``, "the generation was cancelled". The ``Error``
    the sink stores says in ``partial_chars`` how many characters of text the stream holds
    before it (:attr:`text_chars`), unless the error already says.

    ``create=True`` creates the stream first (otherwise the caller creates it, usually before the
    pipeline starts, so that readers can attach at once).

    A store that cannot be reached (:class:`StoreUnavailable`: Redis restarting, a network
    blip) is retried with ``backoff`` (:class:`pipeline.Backoff`) for up to ``retry_for``
    seconds per batch; the events wait in the route's channel meanwhile (with ``spill``, on
    disk), so nothing is lost. Whether a failed append took effect is unknown, so before each
    retry the sink asks the store where the stream is: a batch already stored is not stored
    twice, and a store that lost events it had acknowledged (Redis with AOF ``everysec`` loses
    up to a second of writes on a crash) ends the stream with a retryable ``store`` error
    rather than leaving a silent gap. After ``retry_for`` without the store, the sink gives up:
    it then tries, for ``retry_for`` more seconds, to end the stream with a retryable ``store``
    error, and raises. If even that fails, the stream's owner lease (see
    :class:`StreamStore`) runs out and any reader ends it. A stream ended meanwhile by someone
    else (:class:`StreamEnded`) raises :class:`~pipeline.ConsumerGone`.
    """

    store: StreamStore
    stream_id: str
    batch_max: int = attrs.field(default=256, kw_only=True)
    create: bool = attrs.field(default=False, kw_only=True)
    end_timeout: float = attrs.field(default=5.0, kw_only=True)
    cancel_event: Callable[[], Error] | None = attrs.field(default=None, kw_only=True)
    name: str = attrs.field(default="store", kw_only=True)
    retry_for: float = attrs.field(default=30.0, kw_only=True)
    backoff: Backoff = attrs.field(factory=Backoff, kw_only=True)
    events_stored: int = attrs.field(default=0, init=False)
    batches: int = attrs.field(default=0, init=False)
    last_seq: int = attrs.field(default=0, init=False)
    text_chars: int = attrs.field(default=0, init=False)
    ended: bool = attrs.field(default=False, init=False)
    # A batch whose append was interrupted (cancelled while waiting for the store's answer):
    # stored or not, the store says (appends are atomic); the end is numbered after it if so.
    _in_flight: Sequence[Event] | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.batch_max, bool) or not isinstance(self.batch_max, int):
            raise TypeError(f"batch_max: expected an int, got {self.batch_max!r}")
        if self.batch_max < 1:
            raise ConfigError(f"batch_max must be >= 1, got {self.batch_max}")

    async def consume(self, events: EventReceiver, /) -> None:
        gone = False
        kind = "incomplete"
        try:
            if self.create:
                await self.store.create(self.stream_id)
            while not self.ended and (received := await events.receive_batch(self.batch_max)):
                batch = self._prepare(received)
                if batch:
                    self._in_flight = batch
                    await self._append(batch)
                    self._in_flight = None
                    self._stored(batch)
            # The runner sends nothing after the terminal event; read to the end regardless.
            if self.ended:
                async for _ in events:
                    pass
        except (StreamNotFound, StreamEnded) as exc:
            gone = True
            raise ConsumerGone(f"stream {self.stream_id!r} is gone from the store") from exc
        except StoreFull:
            kind = "overflow"
            raise
        except StoreError:
            kind = "store"
            raise
        except trio.Cancelled:
            kind = "cancelled"
            raise
        finally:
            if not self.ended and not gone:
                await self._end(kind)

    async def _append(self, batch: Sequence[Event]) -> None:
        """Append ``batch``, retrying an unavailable store for up to ``retry_for`` seconds."""
        deadline = trio.current_time() + self.retry_for
        retry = 0
        while True:
            try:
                await self.store.append(self.stream_id, batch)
                return
            except StoreUnavailable:
                if trio.current_time() >= deadline:
                    raise
            await trio.sleep(min(self.backoff.delay(retry), deadline - trio.current_time()))
            retry += 1
            try:
                info = await self.store.info(self.stream_id)
            except StoreUnavailable:
                continue
            if info.ended:
                raise StreamEnded(f"stream {self.stream_id!r} was ended by another process")
            if info.last_seq >= batch[-1].seq:
                return  # the failed append had been stored
            if info.last_seq < self.last_seq:
                raise StoreError(
                    f"the store lost events {info.last_seq + 1}..{self.last_seq} of stream "
                    f"{self.stream_id!r} (restarted without them)"
                )
            batch = [ev for ev in batch if ev.seq > info.last_seq]

    def _prepare(self, batch: list[Event]) -> list[Event]:
        out: list[Event] = []
        last = self.last_seq
        for ev in batch:
            if ev.seq == 0:
                if not is_terminal(ev):
                    continue
                ev = attrs.evolve(ev, seq=last + 1)
            out.append(ev)
            last = ev.seq
            if is_terminal(ev):
                break
        return out

    def _stored(self, batch: Sequence[Event]) -> None:
        self.events_stored += len(batch)
        self.batches += 1
        self.last_seq = batch[-1].seq
        self.text_chars += sum(len(ev.text) for ev in batch if isinstance(ev, TextDelta))
        if is_terminal(batch[-1]):
            self.ended = True

    async def _end(self, kind: str) -> None:
        messages = {
            "cancelled": "the generation was cancelled",
            "overflow": "the stream store's budget for this stream is exhausted",
            "incomplete": "the generation stopped before its end",
            "store": "the stream store failed; the answer is incomplete",
        }
        if kind == "cancelled" and self.cancel_event is not None:
            error = self.cancel_event()
        else:
            error = Error(kind=kind, message=messages[kind], retryable=kind == "store")

        def numbered(seq: int) -> Error:
            # Unless the error says, what readers of the stream got before its end (called
            # once whatever was in flight is settled).
            chars = error.partial_chars or self.text_chars
            return attrs.evolve(error, seq=seq, partial_chars=chars)

        if kind == "store":
            # Not cancelled: wait (unshielded) for the store to come back, within retry_for.
            with trio.move_on_after(self.retry_for + self.end_timeout):
                try:
                    info = await self._when_available()
                    if not info.ended:
                        # Past what readers may have seen, even if the store lost some of it.
                        end = numbered(max(info.last_seq, self.last_seq) + 1)
                        await self._append([end])
                        self._stored([end])
                except (StoreError, ValueError):
                    pass  # the owner lease runs out; a reader ends the stream
            return
        with trio.move_on_after(self.end_timeout) as scope:
            scope.shield = True
            try:
                if self._in_flight is not None:
                    await self._settle_in_flight()
                end = numbered(self.last_seq + 1)
                await self.store.append(self.stream_id, [end])
            except (StoreError, ValueError):
                return  # best effort: the original exception matters more
            self._stored([end])

    async def _settle_in_flight(self) -> None:
        """Count the interrupted append's batch as stored if the store has it."""
        batch, self._in_flight = self._in_flight, None
        if batch and (await self.store.info(self.stream_id)).last_seq >= batch[-1].seq:
            self._stored(batch)

    async def _when_available(self) -> StreamInfo:
        """The stream's info as soon as the store answers (retried with ``backoff``)."""
        retry = 0
        while True:
            try:
                return await self.store.info(self.stream_id)
            except StoreUnavailable:
                await trio.sleep(self.backoff.delay(retry))
                retry += 1

    def __repr__(self) -> str:
        return f"<StoreSink {self.stream_id!r} stored={self.events_stored}>"
