"""The runner: one producer, a chain of stages, fan-out to sinks through bounded channels.

Tasks (all in one nursery owned by :meth:`Pipeline.open`)::

    producer task ──channel(block)──► stage task ──┬─ channel(policy) ─► sink task
                                      (stages,     ├─ channel(policy) ─► sink task
                                       seq, fan-out)└─ ...

The stage task runs every stage and the fan-out; it stamps ``seq`` on each event it sends out.
Without stages and heartbeat there is no stage task: the producer's ``emit`` stamps and fans out
itself (one hop fewer per event). Both schedules run the same code for each event and for the
ending below (``RunningPipeline._run_producer`` and ``_admit``), so the sinks see the same events,
numbers and ending either way.
A sink's channel policy decides what happens when that sink lags (see :class:`Policy`): with
``block`` the whole pipeline waits for it; with the other policies the others go on. A reader
that registers a :class:`DirectConsumer` on its channel (``EventReceiver.deliver_directly``, as
the HTTP server's pump does) is handed each event in the task that fans out (the producer's, in
the direct schedule) while it waits on an empty channel: one task per stream while it keeps up.

Ending:

* The producer returns -> the stages are flushed, a ``Done`` is added if none came, every sink
  reads to the end, the pipeline finishes.
* A terminal event (``Done`` or ``Error``, from the producer or a stage) ends the stream: the
  producer is cancelled, and what it emits after a terminal event of its own is ignored.
* The producer fails before its first event -> the pipeline is cancelled and the exception is
  raised from :meth:`Pipeline.open` / :meth:`Pipeline.run`. After its first event -> an
  ``Error`` event reaches every sink and the pipeline finishes normally.
* A sink's reader goes away (the sink raises :class:`ConsumerGone`, ``trio.BrokenResourceError``
  or ``trio.ClosedResourceError``, or closes its channel): with ``on_failure="cancel"`` (default)
  the whole pipeline is cancelled (the producer and its upstream request are closed within one
  scheduling round) and it ends with reason ``"consumer_gone"``; with ``on_failure="detach"``
  that sink is dropped and the rest goes on. When no sink is left, the producer is cancelled:
  nobody pays for tokens nobody reads.
* A sink fails with another exception: ``"cancel"`` cancels the pipeline and re-raises it;
  ``"detach"`` records it in the sink's statistics and goes on.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Literal, Protocol, TypeAlias, runtime_checkable

import attrs
import trio

from ._channels import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ITEMS,
    ChannelStatistics,
    EventReceiver,
    EventSender,
    Policy,
    PolicyName,
    _check_budget,
    open_event_channel,
)
from ._errors import (
    ChannelOverflowError,
    ConfigError,
    ConsumerGone,
    error_event,
    lone_exception_unwrapped,
)
from ._events import Done, Error, Event, Heartbeat, TextDelta, event_nbytes, is_terminal
from ._producer import Emit, Producer
from ._stage import Stage, StageContext, StageStatistics
from ._stages import Accumulate

__all__ = [
    "EndReason",
    "OnFailure",
    "Pipeline",
    "PipelineStatistics",
    "Route",
    "RunningPipeline",
    "Sink",
    "SinkStatistics",
]

OnFailure: TypeAlias = Literal["cancel", "detach"]
EndReason: TypeAlias = Literal["running", "done", "error", "cancelled", "consumer_gone", "failed"]
SinkState: TypeAlias = Literal["active", "finished", "detached", "gone", "failed", "cancelled"]


@runtime_checkable
class Sink(Protocol):
    """A consumer of events: anything with ``async consume(events)``.

    ``consume`` reads ``events`` until ``trio.EndOfChannel`` (an ``async for`` does that) and
    returns. It runs in its own task, at its own pace; its channel's policy decides what
    happens when it lags. To say its reader went away it raises :class:`ConsumerGone` (or lets
    a ``trio.BrokenResourceError`` from its transport through). On cancellation it must
    release what it holds (files, sockets) and let ``trio.Cancelled`` propagate.
    """

    async def consume(self, events: EventReceiver, /) -> None: ...


SinkLike: TypeAlias = "Sink | Callable[[EventReceiver], Awaitable[None]]"


@attrs.frozen
class Route:
    """A sink and the channel that feeds it.

    ``policy``, ``max_items``, ``max_bytes`` and ``max_spill_bytes`` configure the channel (see
    :func:`open_event_channel`); ``on_failure`` says what the pipeline does when this sink's
    reader goes away or the sink fails (see the module docstring). A channel with policy
    ``fail`` that overflows ends only that sink's stream (with an ``overflow`` error event).
    """

    sink: SinkLike
    policy: Policy | PolicyName = Policy.BLOCK
    max_items: int = DEFAULT_MAX_ITEMS
    max_bytes: int = DEFAULT_MAX_BYTES
    max_spill_bytes: int | None = None
    on_failure: OnFailure = "cancel"
    name: str | None = None

    def __attrs_post_init__(self) -> None:
        # Validate now, not when the pipeline starts: bad values fail where they are written.
        send, recv = open_event_channel(
            max_items=self.max_items,
            max_bytes=self.max_bytes,
            policy=self.policy,
            max_spill_bytes=self.max_spill_bytes,
        )
        send.close()
        recv.close()
        if self.on_failure not in ("cancel", "detach"):
            raise ConfigError(f"on_failure: expected 'cancel' or 'detach', got {self.on_failure!r}")
        _as_sink(self.sink)


@attrs.frozen
class SinkStatistics:
    """One sink's state and channel counters."""

    name: str
    state: SinkState
    error: str | None
    channel: ChannelStatistics


@attrs.frozen
class PipelineStatistics:
    """A snapshot of one stream. Times are ``trio.current_time()`` values or ``None``.

    ``time_to_first_event``/``time_to_first_text`` are measured from the start of the pipeline
    to the first event/text the producer emitted. ``producer_blocked_seconds`` is the time the
    producer spent waiting for room (backpressure). ``source_channel`` is the channel between
    the producer and the stage task; a pipeline without stages and heartbeat has no stage task
    (the producer sends to the sinks' channels itself), and it stays empty.
    """

    reason: EndReason
    started_at: float
    ended_at: float | None
    time_to_first_event: float | None
    time_to_first_text: float | None
    events_in: int
    events_out: int
    text_chars_out: int
    text_bytes_out: int
    last_seq: int
    producer_blocked_seconds: float
    source_channel: ChannelStatistics
    stages: tuple[StageStatistics, ...]
    sinks: tuple[SinkStatistics, ...]
    error: str | None


class _FuncSink:
    def __init__(self, fn: Callable[[EventReceiver], Awaitable[None]]) -> None:
        self.fn = fn

    async def consume(self, events: EventReceiver, /) -> None:
        await self.fn(events)


def _as_sink(obj: SinkLike) -> Sink:
    # What ``isinstance(obj, Sink)`` checks, without the protocol machinery's cost (a few
    # thousand bytecodes per pipeline on Python 3.11).
    if callable(getattr(obj, "consume", None)):
        return obj  # type: ignore[return-value]
    if callable(obj):
        return _FuncSink(obj)
    raise ConfigError(f"sinks: {obj!r} is neither a Sink nor an async callable")


@attrs.define(eq=False)
class _RouteState:
    name: str
    route: Route
    sink: Sink
    sender: EventSender
    receiver: EventReceiver
    state: SinkState = "active"
    error: str | None = None
    external: bool = False  # the caller reads it (Pipeline.events); the caller closes it

    def statistics(self) -> SinkStatistics:
        return SinkStatistics(self.name, self.state, self.error, self.sender.statistics())


@attrs.define(eq=False)
class _StageCounter:
    stage: Stage
    items_in: int = 0
    items_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def statistics(self) -> StageStatistics:
        return StageStatistics(
            getattr(self.stage, "name", type(self.stage).__name__),
            self.items_in,
            self.items_out,
            self.bytes_in,
            self.bytes_out,
        )


_GONE = (ConsumerGone, trio.BrokenResourceError, trio.ClosedResourceError)


@attrs.define(eq=False)
class RunningPipeline:
    """A pipeline that is running, as handed out by :meth:`Pipeline.open`.

    Any task may call :meth:`cancel`, :meth:`statistics` and :meth:`aclose` at any time.
    """

    _pipeline: Pipeline
    _routes: list[_RouteState]
    _source_send: EventSender
    _source_recv: EventReceiver
    _started_at: float
    _scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    _producer_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    _finished: trio.Event = attrs.Factory(trio.Event)
    _reason: EndReason = "running"
    _exception: BaseException | None = None
    _ended_at: float | None = None
    _first_event_at: float | None = None
    _first_text_at: float | None = None
    _events_in: int = 0
    _events_out: int = 0
    _chars_out: int = 0
    _bytes_out: int = 0
    _seq: int = 0
    _counters: list[_StageCounter] = attrs.Factory(list)
    _accumulate: Accumulate | None = None
    _error_text: str | None = None
    _direct: bool = False  # no stages, no heartbeat: the producer's task dispatches itself
    _in_ended: bool = False  # the producer emitted a terminal event (staged schedule)
    _out_ended: bool = False  # a terminal event went out to the sinks: the stream has ended

    # -- public ----------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once every task of the pipeline has ended."""
        return self._finished.is_set()

    @property
    def reason(self) -> EndReason:
        """Why it ended (``"running"`` until then)."""
        return self._reason

    def cancel(self) -> None:
        """Cancel every task of the pipeline (producer, stages, sinks). Idempotent; returns at
        once. The producer's ``async with`` blocks close its upstream request as it unwinds."""
        if self._reason == "running":
            self._reason = "cancelled"
        self._scope.cancel()

    async def wait(self) -> PipelineStatistics:
        """Wait until the pipeline has ended; returns its final statistics."""
        await self._finished.wait()
        return self.statistics()

    async def aclose(self) -> None:
        """Cancel the pipeline and wait until its tasks have unwound.

        Idempotent, and completes even if the calling task is cancelled (the wait is shielded;
        it is short because every task is cancelled).
        """
        self.cancel()
        with trio.CancelScope(shield=True):
            await self._finished.wait()

    def statistics(self) -> PipelineStatistics:
        """A snapshot of the stream's counters; cheap, any time."""
        src = self._source_send.statistics()
        blocked = src.blocked_seconds
        if self._direct:  # the producer waited on the sinks' channels itself, one at a time
            blocked = sum(r.sender.statistics().blocked_seconds for r in self._routes)
        return PipelineStatistics(
            reason=self._reason,
            started_at=self._started_at,
            ended_at=self._ended_at,
            time_to_first_event=None
            if self._first_event_at is None
            else self._first_event_at - self._started_at,
            time_to_first_text=None
            if self._first_text_at is None
            else self._first_text_at - self._started_at,
            events_in=self._events_in,
            events_out=self._events_out,
            text_chars_out=self._chars_out,
            text_bytes_out=self._bytes_out,
            last_seq=self._seq,
            producer_blocked_seconds=blocked,
            source_channel=src,
            stages=tuple(c.statistics() for c in self._counters),
            sinks=tuple(r.statistics() for r in self._routes),
            error=self._error_text,
        )

    # -- internals ---------------------------------------------------------------------------

    def _pressure(self) -> float:
        worst = 0.0
        for r in self._routes:
            if r.state == "active":
                worst = max(worst, r.sender.fill_ratio())
        return worst

    def _fail(self, exc: BaseException) -> None:
        if self._exception is None:
            self._exception = exc
            self._reason = "failed"
            self._error_text = f"{type(exc).__name__}: {exc}"
        self._scope.cancel()

    def _consumer_gone(self, route: _RouteState, state: SinkState) -> None:
        route.state = state
        route.receiver.close()
        cancel = route.route.on_failure == "cancel"
        if cancel or not any(r.state == "active" for r in self._routes):
            # A detached sink that leaves after the others read the whole stream (they
            # finished, so the producer is done too) ends nothing.
            if not cancel and any(r.state == "finished" for r in self._routes):
                return
            if self._reason == "running":
                self._reason = "consumer_gone"
            self._scope.cancel()

    def _count_in(self, event: Event) -> None:
        if self._first_event_at is None:
            self._first_event_at = trio.current_time()
        if self._first_text_at is None and isinstance(event, TextDelta):
            self._first_text_at = trio.current_time()
        self._events_in += 1

    async def _supervise(self, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    for route in self._routes:
                        nursery.start_soon(self._run_sink, route, name=f"llmpipe sink {route.name}")
                    nursery.start_soon(self._run_producer, name="llmpipe producer")
                    if not self._direct:
                        nursery.start_soon(self._run_stages, name="llmpipe stages")
                    task_status.started()
        finally:
            self._source_send.close()
            self._source_recv.close()
            for route in self._routes:
                route.sender.close()
                if not route.external:
                    route.receiver.close()
                if route.state == "active":
                    route.state = "cancelled" if self._scope.cancel_called else "finished"
            if self._reason == "running":
                self._reason = "cancelled" if self._scope.cancel_called else "done"
            self._ended_at = trio.current_time()
            self._finished.set()

    async def _run_sink(self, route: _RouteState) -> None:
        try:
            await route.sink.consume(route.receiver)
        except _GONE as exc:
            route.error = f"{type(exc).__name__}: {exc}"
            self._consumer_gone(route, "gone")
        except Exception as exc:
            route.error = f"{type(exc).__name__}: {exc}"
            route.state = "failed"
            route.receiver.close()
            if route.route.on_failure == "cancel":
                self._fail(exc)
            elif not any(r.state == "active" for r in self._routes):
                self._scope.cancel()
        else:
            if route.state == "active":
                if route.sender.statistics().sender_closed:
                    route.state = "finished"
                    route.receiver.close()
                else:
                    # Returned before the end of the stream: its reader is gone.
                    self._consumer_gone(route, "gone")

    # The rules of a stream's events exist once, in two parts:
    #
    # * the producer's side, :meth:`_run_producer`: what ``emit`` accepts (nothing after the end),
    #   what a producer exception becomes (before the first event: the pipeline fails; after it:
    #   an ``Error`` event), that a stream the producer left open gets its ``Done``;
    # * the fan-out side, :meth:`_admit` for each event, then :meth:`_close_fan_out`: partial
    #   text on errors, the stages, ``seq``, the sinks, the end at a terminal event.
    #
    # Two schedules run them. Direct (no stages, no heartbeat): the producer's ``emit`` is
    # :meth:`_fan_out` itself (what ``_admit`` does without stages), in the producer's task.
    # Staged: ``emit`` sends into the source channel and the stage task calls ``_admit`` for
    # each event it receives (and wakes the stages' timers, sends heartbeats). Either way the
    # sinks see the same events, numbers and ending.

    async def _run_producer(self) -> None:
        """The producer's task, in either schedule: run the producer, handing each event it
        emits to the fan-out or the stage task.

        (One coroutine frame, not a wrapper around another, and in the direct schedule
        ``emit`` is the fan-out itself: every frame between the producer and a sink that
        writes in this task is resumed at each checkpoint of that write.)"""
        emit: Emit
        if self._direct:
            emit, close = self._fan_out, self._close_fan_out
        else:
            emit, close = self._to_stage_task, self._source_send.close
        try:
            with self._producer_scope:
                try:
                    await self._pipeline.producer.stream(emit)
                except Exception as exc:
                    if not self._events_in:
                        self._fail(exc)
                        return
                    if not (self._in_ended or self._out_ended):
                        await self._emit_own(error_event(exc))
                else:
                    if not (self._in_ended or self._out_ended):
                        await self._emit_own(Done())  # through the stages: they flush first
        finally:
            close()

    async def _emit_own(self, event: Event) -> None:
        """The runner's own ``Error`` or ``Done`` after the producer: like ``emit``, but not
        counted in (the producer did not emit it)."""
        if self._direct:
            await self._fan_out(event, own=True)
        else:
            await self._to_stage_task(event, own=True)

    async def _to_stage_task(self, event: Event, /, own: bool = False) -> None:
        """``emit`` of the staged schedule: into the source channel (backpressure)."""
        # Raises Cancelled once the producer is cancelled, before the event is counted in.
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._in_ended:
            return  # after a terminal event: ignored (the producer is being cancelled)
        if not own:
            self._count_in(event)
        try:
            await self._source_send.send(event)
        except trio.BrokenResourceError:
            pass  # the stage task has ended the stream; the producer is being cancelled
        else:
            if not is_terminal(event):
                return
        self._in_ended = True
        self._producer_scope.cancel()

    async def _admit(self, event: Event) -> bool:
        """One event from the producer through the stages to the sinks; True once the stream
        has ended (a terminal event went out)."""
        if not self._counters:
            await self._fan_out(event)
            return self._out_ended
        out = self._push([event], 0, trio.current_time())
        return bool(out) and await self._dispatch(out)

    def _close_fan_out(self) -> None:
        """The fan-out is over (the stream ended, or the pipeline is being cancelled): the
        sinks read to the end of their channels, the producer is cancelled."""
        self._source_recv.close()
        self._producer_scope.cancel()
        for route in self._routes:
            route.sender.close()

    async def _run_stages(self) -> None:
        recv = self._source_recv
        stages = self._counters
        heartbeat = self._pipeline.heartbeat_interval
        last_out = trio.current_time()
        try:
            while True:
                deadline = math.inf
                for c in stages:
                    d = c.stage.deadline()
                    if d < deadline:
                        deadline = d
                hb_at = last_out + heartbeat if heartbeat is not None else math.inf
                wake = min(deadline, hb_at)
                # EndOfChannel: the producer's task ended without delivering the end of the
                # stream, which happens only when the pipeline is being cancelled (_run_producer).
                if wake == math.inf:
                    try:
                        event = await recv.receive()
                    except trio.EndOfChannel:
                        return
                else:
                    got: Event | None = None
                    with trio.move_on_at(wake):
                        try:
                            got = await recv.receive()
                        except trio.EndOfChannel:
                            return
                    if got is None:
                        now = trio.current_time()
                        if deadline <= now:
                            if await self._dispatch(self._expire(now)):
                                return
                        else:
                            await self._dispatch([Heartbeat()])
                        last_out = trio.current_time()
                        continue
                    event = got
                sent = self._events_out
                if await self._admit(event):
                    return
                if self._events_out != sent:
                    last_out = trio.current_time()
        finally:
            self._close_fan_out()

    def _with_partial(self, event: Error) -> Error:
        if event.partial_chars or event.partial_text is not None:
            return event
        text = self._accumulate.text if self._accumulate is not None else None
        return attrs.evolve(event, partial_chars=self._chars_out, partial_text=text)

    def _push(self, events: list[Event], start: int, now: float) -> list[Event]:
        for c in self._counters[start:]:
            out: list[Event] = []
            for ev in events:
                c.items_in += 1
                c.bytes_in += event_nbytes(ev)
                out.extend(c.stage.feed(ev, now))
            c.items_out += len(out)
            for ev in out:
                c.bytes_out += event_nbytes(ev)
            events = out
            if not events:
                break
        return events

    def _expire(self, now: float) -> list[Event]:
        # Later stages hold older text: release theirs first, then what earlier stages release
        # goes through the later ones.
        out: list[Event] = []
        for i in range(len(self._counters) - 1, -1, -1):
            c = self._counters[i]
            if c.stage.deadline() <= now:
                released = list(c.stage.expire(now))
                c.items_out += len(released)
                for ev in released:
                    c.bytes_out += event_nbytes(ev)
                out.extend(self._push(released, i + 1, now))
        return out

    async def _dispatch(self, events: Sequence[Event]) -> bool:
        """Stamp and fan out ``events``; True once a terminal event was sent (the end)."""
        for ev in events:
            await self._fan_out(ev)
            if self._out_ended:
                return True
        return False

    async def _fan_out(self, ev: Event, /, own: bool = False) -> None:
        """Stamp one event and send it to every sink still reading; a terminal event ends the
        stream (``_out_ended``; the producer is cancelled).

        In the direct schedule this is the producer's ``emit``: it also counts the event in
        (unless it is the runner's ``own``), ignores what the producer emits after the end,
        and is a checkpoint even when no sink is left (each sink's ``send`` is one, so no check
        of its own before them)."""
        if self._out_ended:
            # After a terminal event: ignored (the producer is being cancelled: raises here).
            await trio.lowlevel.checkpoint_if_cancelled()
            return
        if self._direct and not own:
            if self._first_text_at is None:
                self._count_in(ev)
            else:  # what _count_in does once the first text was counted
                self._events_in += 1
        self._seq += 1
        seq = self._seq
        text = None
        # ``nbytes``: ``event_nbytes``, once, for the direct path's statistics and ours.
        if isinstance(ev, TextDelta):
            text = ev.text
            ev = TextDelta(text, seq=seq)
            nbytes = len(text) if text.isascii() else len(text.encode())
        else:
            if isinstance(ev, Error):
                # Here, not as it leaves the producer: stages (a chunker) release the text
                # they held ahead of it, and that text was delivered too.
                ev = self._with_partial(ev)
            ev = attrs.evolve(ev, seq=seq)
            nbytes = event_nbytes(ev)
        sent = False
        for route in self._routes:
            if route.state != "active":
                continue
            sender = route.sender
            try:
                # The channel's direct path (``EventSender.send``) awaited in this frame: one
                # frame fewer under a sink's write made in this task.
                direct = sender.direct_consumer()
                if direct is not None:
                    await trio.lowlevel.checkpoint_if_cancelled()
                    if await direct.take(ev):
                        sender.taken_directly(ev, nbytes)
                        sent = True
                        continue
                await sender.send(ev)
                sent = True
            except ChannelOverflowError as exc:
                route.state = "detached"
                route.error = str(exc)
                if not any(r.state == "active" for r in self._routes):
                    self._scope.cancel()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                if route.state == "active":
                    self._consumer_gone(route, "gone")
        if not sent:
            await trio.lowlevel.checkpoint_if_cancelled()
        # Counted once the sends returned: an event cancelled before any sink took it is not
        # "out".
        self._events_out += 1
        if text is not None:
            self._chars_out += len(text)
            self._bytes_out += nbytes
        elif is_terminal(ev):
            self._out_ended = True
            self._producer_scope.cancel()
            if isinstance(ev, Error) and self._reason == "running":
                self._reason = "error"
                self._error_text = f"{ev.kind}: {ev.message}"


@attrs.define(eq=False)
class Pipeline:
    """A producer, a chain of stages and the sinks they feed.

    A ``Pipeline`` runs once (its stages hold per-stream state): build one per stream.
    Use :meth:`run` to run it to the end, :meth:`open` to run it in the background of a block,
    or :meth:`events` to read its events yourself.

    ``source_buffer`` is the item budget between the producer and the stages (policy
    ``block``); ``heartbeat_interval`` (seconds) sends a :class:`Heartbeat` event when nothing
    was sent for that long (``None``: never).
    """

    producer: Producer
    stages: Sequence[Stage] = ()
    sinks: Sequence[Route | SinkLike] = ()
    source_buffer: int = DEFAULT_MAX_ITEMS
    heartbeat_interval: float | None = None
    _used: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        if not callable(getattr(self.producer, "stream", None)):  # isinstance(_, Producer)
            raise ConfigError(f"producer: {self.producer!r} has no async stream(emit) method")
        if self.heartbeat_interval is not None and self.heartbeat_interval <= 0:
            raise ConfigError(f"heartbeat_interval must be > 0, got {self.heartbeat_interval}")
        for stage in self.stages:
            if not isinstance(stage, Stage):
                raise ConfigError(f"stages: {stage!r} is not a pipeline.Stage")
        _check_budget("source_buffer", self.source_buffer, minimum=1)
        self.sinks = [s if isinstance(s, Route) else Route(s) for s in self.sinks]

    def _routes(self, extra: Sequence[Route]) -> list[_RouteState]:
        states = []
        for i, item in enumerate([*self.sinks, *extra]):
            route = item if isinstance(item, Route) else Route(item)  # already Routes
            sink = _as_sink(route.sink)
            send, recv = open_event_channel(
                max_items=route.max_items,
                max_bytes=route.max_bytes,
                policy=route.policy,
                max_spill_bytes=route.max_spill_bytes,
            )
            name = route.name or f"{i}:{getattr(sink, 'name', type(sink).__name__)}"
            external = i >= len(self.sinks)
            states.append(_RouteState(name, route, sink, send, recv, external=external))
        return states

    def open(self) -> AbstractAsyncContextManager[RunningPipeline]:
        """Start the pipeline; exiting the block waits for it to end.

        If the block raises, the pipeline is cancelled first. After the block, an exception
        that stopped the pipeline (the producer failing before its first event, a sink failing
        with ``on_failure="cancel"``) is raised. Raises ``RuntimeError`` if this pipeline was
        already run.
        """
        return self._open(())

    @asynccontextmanager
    async def _open(self, extra: Sequence[Route]) -> AsyncIterator[RunningPipeline]:
        """:meth:`open`, with ``extra`` routes after ``sinks`` that the caller reads (their
        receivers stay open when the pipeline ends: the caller closes them)."""
        if self._used:
            raise RuntimeError("a Pipeline runs once; build a new one for the next stream")
        self._used = True
        routes = self._routes(extra)
        src_send, src_recv = open_event_channel(max_items=self.source_buffer)
        running = RunningPipeline(self, routes, src_send, src_recv, trio.current_time())
        running._direct = not self.stages and self.heartbeat_interval is None
        context = StageContext(downstream_pressure=running._pressure)
        for stage in self.stages:
            stage.bind(context)
            running._counters.append(_StageCounter(stage))
            if running._accumulate is None and isinstance(stage, Accumulate):
                running._accumulate = stage
        # Tasks report their failures through ``running``; only the block's own exception (or
        # a bug of ours) leaves the nursery: a lone one reaches the caller as itself.
        with lone_exception_unwrapped():
            async with trio.open_nursery() as nursery:
                await nursery.start(running._supervise)
                try:
                    yield running
                except BaseException:
                    running.cancel()
                    raise
        if running._exception is not None:
            raise running._exception

    async def run(self) -> PipelineStatistics:
        """Run to the end; returns the final statistics (see :meth:`open` for exceptions)."""
        async with self.open() as running:
            pass
        return running.statistics()

    @asynccontextmanager
    async def events(
        self,
        *,
        policy: Policy | PolicyName = Policy.BLOCK,
        max_items: int = DEFAULT_MAX_ITEMS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_spill_bytes: int | None = None,
    ) -> AsyncIterator[EventReceiver]:
        """Run the pipeline and hand its events to the caller, as one more sink.

        The caller reads the receiver (``async for event in events``). Leaving the block early
        closes it, which counts as the consumer going away: the pipeline is cancelled and the
        producer closed. Other sinks (``sinks=``) run as usual.
        """
        released = trio.Event()

        async def caller_sink(events: EventReceiver) -> None:
            # The caller reads ``events``; this task only keeps the route open until then.
            await released.wait()

        route = Route(
            caller_sink,
            policy=policy,
            max_items=max_items,
            max_bytes=max_bytes,
            max_spill_bytes=max_spill_bytes,
            name="caller",
        )
        async with self._open([route]) as running:
            receiver = running._routes[-1].receiver
            try:
                yield receiver
            finally:
                receiver.close()
                released.set()

    def __repr__(self) -> str:
        return f"<Pipeline producer={self.producer!r} stages={len(self.stages)}>"
