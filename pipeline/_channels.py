"""Bounded event channels with per-consumer overflow policies.

A channel connects one sending task to one receiving task. Its budget counts **items** and
**bytes of text** (UTF-8, see :func:`pipeline.event_nbytes`); it never grows without bound. When
the budget is full, the channel's :class:`Policy` decides:

``block`` (default)
    ``send`` waits until the consumer makes room: backpressure to the producer.
``coalesce``
    a text delta sent while the newest queued item is an unread text delta is merged into it, so a
    lagging consumer receives fewer, larger chunks and loses nothing (this holds for every event
    class with the ``mergeable`` trait; text deltas are the only one). This happens whenever the
    consumer is behind (the queue is not empty), not only when the budget is full; the merged
    text still counts against the byte budget, and when it would exceed it ``send`` blocks.
    Events that are not text are queued as usual (and block when the item budget is full).
``spill``
    past the memory budget, events are appended to a temporary file and read back in order, so
    ``send`` never waits and memory stays flat while nothing is lost. Consecutive text deltas
    read back from the file are merged (up to ``max_bytes`` of text per item), so a consumer
    that fell far behind catches up in few, large reads. The file may grow up to
    ``max_spill_bytes`` (then ``send`` blocks) and is truncated whenever the reader catches up.
    File writes are plain buffered writes of 64 KiB from the event loop (to the page cache;
    a worker thread per write would cost more than the write).
``drop_oldest``
    the oldest queued droppable events (the ``droppable`` trait: text deltas, tool-call argument
    deltas, heartbeats) are discarded to make room; the consumer then receives a
    :class:`pipeline.Dropped` event, before the events that follow, saying how many events and
    how much text it missed. Terminal events
    and tool-call boundaries are never dropped (if only those are queued, ``send`` blocks).
``fail``
    ``send`` raises :class:`pipeline.ChannelOverflowError`; the consumer receives what was queued,
    then an :class:`pipeline.Error` event of kind ``"overflow"``, then end of channel.

Choosing a budget: ``max_items`` bounds the scheduling work the consumer can fall behind by and
``max_bytes`` the memory. For a display (SSE, terminal) 64 items / 64 KiB is plenty; for a speech
engine that consumes far slower than the model produces, use ``coalesce`` (it only ever needs the
text) or ``spill`` (when each event must be kept as it was).

Direct delivery: a receiving task that can consume an event in the sender's task (a server
writing to a socket) registers a :class:`DirectConsumer` (:meth:`EventReceiver.deliver_directly`).
While that task waits in ``receive`` on an empty channel and the consumer says it is ready, ``send``
hands the event to the consumer instead of queuing it: no wake-up of the receiving task, no queue.
Otherwise (the receiver is busy, something is queued or spilled, the consumer is not ready) the
event goes through the channel and its policy as usual. So the receiver sees every event once and
in order, and the policy acts as soon as the receiver lags.

Each policy is a small strategy object (``_Block``, ``_Coalesce``, ...) whose ``put`` decides
where an event goes; the sender only calls it. The spill file is :mod:`pipeline._spill`.

Cost: a send or receive that need not wait does not yield to the scheduler every time; it checks
for cancellation on every call and yields at least once every :data:`YIELD_EVERY` calls, so other
tasks keep running during a long burst. This batching is what makes a hop cheap.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Any, Final, Literal, Protocol, TypeAlias

import attrs
import trio

from ._errors import ChannelOverflowError, ConfigError
from ._events import Dropped, Error, Event, TextDelta, event_nbytes
from ._spill import Spill

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ITEMS",
    "YIELD_EVERY",
    "ChannelStatistics",
    "DirectConsumer",
    "EventReceiver",
    "EventSender",
    "Policy",
    "PolicyName",
    "open_event_channel",
]

DEFAULT_MAX_ITEMS: Final = 64
DEFAULT_MAX_BYTES: Final = 64 * 1024
YIELD_EVERY: Final = 32


class Policy(enum.Enum):
    """What a full channel does; see the module docstring."""

    BLOCK = "block"
    COALESCE = "coalesce"
    SPILL = "spill"
    DROP_OLDEST = "drop_oldest"
    FAIL = "fail"


PolicyName: TypeAlias = Literal["block", "coalesce", "spill", "drop_oldest", "fail"]


@attrs.frozen
class ChannelStatistics:
    """A snapshot of one channel. Cheap to take; safe to publish (e.g. on ``/metrics``)."""

    policy: str
    max_items: int
    max_bytes: int
    items_queued: int
    bytes_queued: int
    high_water_items: int
    high_water_bytes: int
    items_sent: int
    items_received: int
    bytes_sent: int
    blocked_seconds: float
    items_coalesced: int
    items_spilled: int
    bytes_spilled: int
    spill_queued_items: int
    spill_file_bytes: int
    items_dropped: int
    bytes_dropped: int
    sender_closed: bool
    receiver_closed: bool
    items_direct: int = 0
    """Of ``items_sent``/``items_received``, those handed to the receiver's
    :class:`DirectConsumer` in the sender's task (never queued)."""

    @property
    def fill_ratio(self) -> float:
        """How full the in-memory budget is, 0.0 to 1.0 (the larger of items and bytes)."""
        return max(
            self.items_queued / self.max_items if self.max_items else 0.0,
            self.bytes_queued / self.max_bytes if self.max_bytes else 0.0,
            1.0 if self.spill_queued_items else 0.0,
        )


class DirectConsumer(Protocol):
    """What a receiving task registers to take events in the sender's task
    (:meth:`EventReceiver.deliver_directly`)."""

    def ready(self) -> bool:
        """Whether :meth:`take` may be called now (checked before each event; cheap, no I/O).
        Say no whenever taking the event could wait long (a write already in progress, a
        consumer known to lag): the event is then queued under the channel's policy."""

    async def take(self, event: Event, /) -> bool:
        """Consume ``event`` in the sender's task; False if it was not consumed (it is then
        queued, for the receiving task to see). Must not raise, other than ``trio.Cancelled``."""


class _Run:
    """Queued mergeable events (see :mod:`pipeline._events`) that later ones of the same class
    may still be merged into (policy coalesce). Made when the second one arrives.

    Appending is one ``list.append``; every 64 parts are joined into one piece, so the run holds
    O(n / 64) small objects (not one per event) and merging stays linear.
    """

    __slots__ = ("cls", "field", "parts", "pieces", "seq")

    def __init__(self, first: Event, field: str) -> None:
        self.cls: type[Any] = type(first)
        self.field = field
        self.pieces: list[str] = []
        self.parts: list[str] = [getattr(first, field)]
        self.seq = first.seq

    def append(self, event: Event) -> None:
        parts = self.parts
        parts.append(getattr(event, self.field))
        if len(parts) >= 64:
            self.pieces.append("".join(parts))
            parts.clear()
        self.seq = event.seq

    def materialize(self) -> Event:
        """One event: the text of all of them, the last one's ``seq`` (a mergeable class has
        no other fields)."""
        self.pieces.extend(self.parts)
        event: Event = self.cls(**{self.field: "".join(self.pieces), "seq": self.seq})
        return event


_Item: TypeAlias = "Event | _Run"


def _coerce_policy(policy: Policy | str) -> Policy:
    try:
        return Policy(policy)
    except ValueError:
        names = ", ".join(p.value for p in Policy)
        raise ConfigError(f"policy: unknown overflow policy {policy!r} (one of: {names})") from None


def _check_budget(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


@attrs.define(eq=False)
class _State:
    """What the two ends of one channel share."""

    policy: Policy
    strategy: _Strategy
    max_items: int
    max_bytes: int
    max_spill_bytes: int | None
    queue: deque[_Item] = attrs.Factory(deque)
    nbytes: int = 0
    spill: Spill | None = None
    notice: Event | None = None  # a Dropped or overflow Error to deliver before/after the queue
    notice_first: bool = True
    sender_closed: bool = False
    receiver_closed: bool = False
    recv_lot: trio.lowlevel.ParkingLot = attrs.Factory(trio.lowlevel.ParkingLot)
    send_lot: trio.lowlevel.ParkingLot = attrs.Factory(trio.lowlevel.ParkingLot)
    # statistics
    high_items: int = 0
    high_bytes: int = 0
    sent: int = 0
    received: int = 0
    bytes_sent: int = 0
    blocked: float = 0.0
    coalesced: int = 0
    spilled: int = 0
    bytes_spilled: int = 0
    dropped: int = 0
    bytes_dropped: int = 0
    direct: DirectConsumer | None = None
    taken_directly: int = 0

    def fits(self, nbytes: int) -> bool:
        if not self.queue:
            return True  # an item larger than the whole budget still passes alone
        return len(self.queue) < self.max_items and self.nbytes + nbytes <= self.max_bytes

    def push(self, item: _Item, nbytes: int) -> None:
        self.queue.append(item)
        self.nbytes += nbytes
        if len(self.queue) > self.high_items:
            self.high_items = len(self.queue)
        if self.nbytes > self.high_bytes:
            self.high_bytes = self.nbytes

    def statistics(self) -> ChannelStatistics:
        spill = self.spill
        return ChannelStatistics(
            policy=self.policy.value,
            max_items=self.max_items,
            max_bytes=self.max_bytes,
            items_queued=len(self.queue),
            bytes_queued=self.nbytes,
            high_water_items=self.high_items,
            high_water_bytes=self.high_bytes,
            items_sent=self.sent,
            items_received=self.received,
            bytes_sent=self.bytes_sent,
            blocked_seconds=self.blocked,
            items_coalesced=self.coalesced,
            items_spilled=self.spilled,
            bytes_spilled=self.bytes_spilled,
            spill_queued_items=spill.items if spill else 0,
            spill_file_bytes=spill.file_bytes if spill else 0,
            items_dropped=self.dropped,
            bytes_dropped=self.bytes_dropped,
            sender_closed=self.sender_closed,
            receiver_closed=self.receiver_closed,
            items_direct=self.taken_directly,
        )


class _Strategy(Protocol):
    """One overflow policy: where an event goes, given the channel's state."""

    def put(self, st: _State, value: Event, nbytes: int, /) -> None:
        """Queue ``value`` (``nbytes`` of text) in ``st``, or raise ``trio.WouldBlock`` if the
        sender must wait for the receiver (nothing changed then)."""


class _Block:
    """``block``: an event that does not fit waits."""

    __slots__ = ()

    def put(self, st: _State, value: Event, nbytes: int, /) -> None:
        if not st.fits(nbytes):
            raise trio.WouldBlock
        st.push(value, nbytes)


class _Coalesce:
    """``coalesce``: a mergeable event joins the newest queued one of its class while the
    budget allows, before it is even checked whether it fits; anything else blocks."""

    __slots__ = ()

    def put(self, st: _State, value: Event, nbytes: int, /) -> None:
        queue = st.queue
        if value.mergeable and queue and st.nbytes + nbytes <= st.max_bytes:
            tail = queue[-1]
            if type(tail) is _Run:
                if tail.cls is type(value):
                    tail.append(value)
                    self._merged(st, nbytes)
                    return
            elif type(tail) is type(value):
                run = _Run(tail, value.text_field or "")
                run.append(value)
                queue[-1] = run
                self._merged(st, nbytes)
                return
        if not st.fits(nbytes):
            raise trio.WouldBlock
        st.push(value, nbytes)

    @staticmethod
    def _merged(st: _State, nbytes: int) -> None:
        st.nbytes += nbytes
        st.coalesced += 1
        if st.nbytes > st.high_bytes:
            st.high_bytes = st.nbytes


class _SpillPolicy:
    """``spill``: an event that does not fit goes to the spill file, and so does every event
    after it until the receiver emptied the file (order is kept); a full file blocks."""

    __slots__ = ()

    def put(self, st: _State, value: Event, nbytes: int, /) -> None:
        spill = st.spill
        if spill is None or not spill.items:
            if st.fits(nbytes):
                st.push(value, nbytes)
                return
            if spill is None:
                spill = st.spill = Spill(st.max_spill_bytes)
        if not spill.has_room():
            raise trio.WouldBlock
        spill.append(value, nbytes)
        st.spilled += 1
        st.bytes_spilled += nbytes


class _DropOldest:
    """``drop_oldest``: to make room, the oldest queued droppable events are discarded and
    counted in a :class:`Dropped` notice; if that cannot make room, the event blocks."""

    __slots__ = ()

    def put(self, st: _State, value: Event, nbytes: int, /) -> None:
        if not st.fits(nbytes) and not self._drop_for(st, nbytes):
            raise trio.WouldBlock
        st.push(value, nbytes)

    @staticmethod
    def _drop_for(st: _State, nbytes: int) -> bool:
        """Drop oldest droppable items until ``nbytes`` fits; False if it cannot be made to."""
        kept: deque[_Item] = deque()
        items = bytes_ = chars = 0
        first = last = 0
        while st.queue and not (
            len(st.queue) + len(kept) < st.max_items and st.nbytes + nbytes <= st.max_bytes
        ):
            item = st.queue.popleft()
            ev = item.materialize() if isinstance(item, _Run) else item
            if ev.droppable:
                n = event_nbytes(ev)
                st.nbytes -= n
                items += 1
                bytes_ += n
                if isinstance(ev, TextDelta):
                    chars += len(ev.text)
                first = first or ev.seq
                last = ev.seq
            else:
                kept.append(item)
        kept.extend(st.queue)
        st.queue = kept
        if items:
            st.dropped += items
            st.bytes_dropped += bytes_
            prev = st.notice
            if isinstance(prev, Dropped):
                st.notice = Dropped(
                    items=prev.items + items,
                    text_bytes=prev.text_bytes + bytes_,
                    text_chars=prev.text_chars + chars,
                    first_seq=prev.first_seq or first,
                    last_seq=last or prev.last_seq,
                )
            else:
                st.notice = Dropped(
                    items=items, text_bytes=bytes_, text_chars=chars, first_seq=first, last_seq=last
                )
            st.notice_first = True
        return len(st.queue) < st.max_items and st.nbytes + nbytes <= st.max_bytes


class _Fail:
    """``fail``: an event that does not fit ends the channel: the sender gets
    :class:`ChannelOverflowError`, the receiver an ``overflow`` :class:`Error` after the queue."""

    __slots__ = ()

    def put(self, st: _State, value: Event, nbytes: int, /) -> None:
        if st.fits(nbytes):
            st.push(value, nbytes)
            return
        st.sender_closed = True
        message = (
            f"consumer fell behind: channel full ({len(st.queue)} items, "
            f"{st.nbytes} bytes; budget {st.max_items} items, {st.max_bytes} bytes)"
        )
        st.notice = Error(kind="overflow", message=message, retryable=False)
        st.notice_first = False
        st.recv_lot.unpark_all()
        raise ChannelOverflowError(message)


_STRATEGIES: Final[dict[Policy, _Strategy]] = {
    Policy.BLOCK: _Block(),
    Policy.COALESCE: _Coalesce(),
    Policy.SPILL: _SpillPolicy(),
    Policy.DROP_OLDEST: _DropOldest(),
    Policy.FAIL: _Fail(),
}


@attrs.define(eq=False, repr=False)
class EventSender(trio.abc.SendChannel[Event]):
    """The sending end of an event channel.

    One task at a time may call :meth:`send`; a second concurrent call raises
    ``trio.BusyResourceError``. :meth:`send` is cancel-safe: if it is cancelled, the event was
    not queued. After the receiver closed, :meth:`send` raises ``trio.BrokenResourceError``.
    """

    _state: _State
    _busy: bool = False
    _tick: int = 0

    def statistics(self) -> ChannelStatistics:
        """A snapshot of the channel's counters (shared with the receiving end)."""
        return self._state.statistics()

    def fill_ratio(self) -> float:
        """Same as ``statistics().fill_ratio``, without building the snapshot (hot path)."""
        st = self._state
        if st.spill is not None and st.spill.items:
            return 1.0
        items = len(st.queue) / st.max_items
        nbytes = st.nbytes / st.max_bytes if st.max_bytes else 0.0
        return items if items > nbytes else nbytes

    @property
    def policy(self) -> Policy:
        return self._state.policy

    def direct_consumer(self) -> DirectConsumer | None:
        """The receiver's :class:`DirectConsumer` if the next event may be handed to it now (the
        receiving task waits on an empty channel, nothing is spilled or pending, both ends are
        open, the consumer is ready), else ``None``.

        :meth:`send` asks this itself. A sender may also await the consumer's ``take`` in its
        own coroutine (the runner's fan-out does: each frame under a sink's write in the
        sender's task is resumed at every checkpoint of it), after a cancellation check, then
        call :meth:`taken_directly` if ``take`` returned True, or :meth:`send` if not."""
        st = self._state
        direct = st.direct
        if (
            direct is not None
            and st.recv_lot  # the receiving task waits: it is not consuming anything
            and not st.queue
            and st.notice is None
            and st.spill is None
            and not st.sender_closed
            and not st.receiver_closed
            and direct.ready()
        ):
            return direct
        return None

    def taken_directly(self, value: Event, nbytes: int) -> None:
        """Count ``value`` (``nbytes``: its :func:`event_nbytes`, which the caller has), taken
        by the receiver's :class:`DirectConsumer`, as sent and received (see
        :meth:`direct_consumer`)."""
        st = self._state
        st.sent += 1
        st.received += 1
        st.taken_directly += 1
        st.bytes_sent += nbytes

    def send_nowait(self, value: Event) -> None:
        """Queue ``value`` if the policy allows it without waiting, else raise ``trio.WouldBlock``.

        Raises ``ChannelOverflowError`` under policy ``fail`` when full.
        """
        st = self._state
        if st.sender_closed:
            raise trio.ClosedResourceError("the sending end of this channel is closed")
        if st.receiver_closed:
            raise trio.BrokenResourceError("the receiver of this channel went away")
        nbytes = event_nbytes(value)
        st.strategy.put(st, value, nbytes)
        st.sent += 1
        st.bytes_sent += nbytes
        if st.recv_lot:
            st.recv_lot.unpark_all()

    async def send(self, value: Event) -> None:
        """Queue ``value``, waiting while the policy says the channel is full; or hand it to the
        receiver's :class:`DirectConsumer` in this task, when the receiver waits on an empty
        channel and the consumer is ready (then a cancellation may come after it was consumed).

        The time spent waiting is added to ``statistics().blocked_seconds``.
        """
        if self._busy:
            raise trio.BusyResourceError("another task is already sending on this channel")
        self._busy = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            direct = self.direct_consumer()
            if direct is not None and await direct.take(value):
                self.taken_directly(value, event_nbytes(value))
                return
            st = self._state
            try:
                self.send_nowait(value)
            except trio.WouldBlock:
                pass
            else:
                self._tick += 1
                if self._tick >= YIELD_EVERY:
                    self._tick = 0
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return
            start = trio.current_time()
            try:
                while True:
                    await st.send_lot.park()
                    try:
                        self.send_nowait(value)
                    except trio.WouldBlock:
                        continue
                    return
            finally:
                st.blocked += trio.current_time() - start
        finally:
            self._busy = False

    def close(self) -> None:
        """Signal end of stream to the receiver. Idempotent; never blocks."""
        st = self._state
        if not st.sender_closed:
            st.sender_closed = True
        st.recv_lot.unpark_all()
        st.send_lot.unpark_all()

    async def aclose(self) -> None:
        """Same as :meth:`close`, plus a checkpoint (trio's ``aclose`` contract)."""
        self.close()
        await trio.lowlevel.checkpoint()

    def clone(self) -> EventSender:
        raise NotImplementedError("event channels have exactly one sender")


@attrs.define(eq=False, repr=False)
class EventReceiver(trio.abc.ReceiveChannel[Event]):
    """The receiving end of an event channel.

    One task at a time may call :meth:`receive`. Raises ``trio.EndOfChannel`` after the sender
    closed and everything queued (in memory and in the spill file) was received; closing the
    receiver makes the sender's next ``send`` raise ``trio.BrokenResourceError`` and releases the
    spill file.
    """

    _state: _State
    _busy: bool = False
    _tick: int = 0

    def statistics(self) -> ChannelStatistics:
        """A snapshot of the channel's counters (shared with the sending end)."""
        return self._state.statistics()

    def deliver_directly(self, consumer: DirectConsumer | None) -> None:
        """Let the sender hand events to ``consumer`` in its own task while this end's task
        waits in :meth:`receive` (or :meth:`receive_batch`) on an empty channel and
        ``consumer.ready()``; ``None`` stops it. See the module docstring. Events the consumer
        took are counted as sent and received (and in ``items_direct``); the receiving task
        never sees them."""
        self._state.direct = consumer

    def receive_nowait(self) -> Event:
        """The next event, or ``trio.WouldBlock`` if none is ready."""
        st = self._state
        if st.receiver_closed:
            raise trio.ClosedResourceError("the receiving end of this channel is closed")
        if st.notice is not None and (st.notice_first or not (st.queue or _spilled(st))):
            event = st.notice
            st.notice = None
            st.received += 1
            return event
        if st.queue:
            item = st.queue.popleft()
            event = item.materialize() if isinstance(item, _Run) else item
            st.nbytes -= event_nbytes(event)
        elif st.spill is not None and st.spill.items:
            event = st.spill.pop_merged(max(st.max_bytes, 1))
            if not st.spill.items:
                # Caught up: release the file; a new one is made if the consumer lags again.
                st.spill.close()
                st.spill = None
        elif st.sender_closed:
            raise trio.EndOfChannel
        else:
            raise trio.WouldBlock
        st.received += 1
        if st.send_lot:
            st.send_lot.unpark_all()
        return event

    async def receive(self) -> Event:
        """Wait for the next event. Cancel-safe: if cancelled, no event was taken."""
        if self._busy:
            raise trio.BusyResourceError("another task is already receiving on this channel")
        self._busy = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                event = self.receive_nowait()
            except trio.WouldBlock:
                pass
            else:
                self._tick += 1
                if self._tick >= YIELD_EVERY:
                    self._tick = 0
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return event
            st = self._state
            while True:
                await st.recv_lot.park()
                try:
                    return self.receive_nowait()
                except trio.WouldBlock:
                    continue
        finally:
            self._busy = False

    async def receive_batch(self, max_items: int = 256) -> list[Event]:
        """Wait for one event, then take whatever else is ready without waiting, up to
        ``max_items`` events in all; an empty list at the end of the stream.

        For a consumer that does I/O per batch (a file, a socket, a store): one that lags makes
        fewer, larger writes, and a batch is bounded by ``max_items`` and by what the channel's
        own budget let in. Cancel-safe like :meth:`receive`: if cancelled, no event was taken.
        """
        try:
            batch = [await self.receive()]
        except trio.EndOfChannel:
            return []
        st = self._state
        # Take only what is ready (queued, spilled or a pending notice): no WouldBlock raised.
        while len(batch) < max_items and (st.queue or st.notice is not None or _spilled(st)):
            batch.append(self.receive_nowait())
        return batch

    def close(self) -> None:
        """Stop receiving: drop what is queued and release the spill file. Idempotent."""
        st = self._state
        if st.receiver_closed:
            return
        st.receiver_closed = True
        st.queue.clear()
        st.nbytes = 0
        st.notice = None
        if st.spill is not None:
            st.spill.close()
        st.send_lot.unpark_all()
        st.recv_lot.unpark_all()

    async def aclose(self) -> None:
        """Same as :meth:`close`, plus a checkpoint (trio's ``aclose`` contract)."""
        self.close()
        await trio.lowlevel.checkpoint()

    def clone(self) -> EventReceiver:
        raise NotImplementedError("event channels have exactly one receiver")


def _spilled(st: _State) -> bool:
    return st.spill is not None and st.spill.items > 0


def open_event_channel(
    *,
    max_items: int = DEFAULT_MAX_ITEMS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    policy: Policy | PolicyName = Policy.BLOCK,
    max_spill_bytes: int | None = None,
) -> tuple[EventSender, EventReceiver]:
    """Open a bounded event channel; returns ``(sender, receiver)``.

    ``max_items`` (>= 1) and ``max_bytes`` (>= 0) bound what is held in memory; an event larger
    than ``max_bytes`` on its own still passes when the channel is empty. ``max_spill_bytes``
    bounds the spill file (policy ``spill`` only; ``None`` = limited by the disk).
    Raises ``TypeError`` for non-integer budgets and :class:`ConfigError` (a ``ValueError``)
    for out-of-range ones or an unknown policy.
    """
    pol = _coerce_policy(policy)
    _check_budget("max_items", max_items, minimum=1)
    _check_budget("max_bytes", max_bytes, minimum=0)
    if max_spill_bytes is not None:
        _check_budget("max_spill_bytes", max_spill_bytes, minimum=1)
    state = _State(pol, _STRATEGIES[pol], max_items, max_bytes, max_spill_bytes)
    return EventSender(state), EventReceiver(state)
