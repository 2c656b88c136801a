"""A batch worker: jobs from a :class:`RedisJobQueue`, run by a :class:`Batch`, recorded back
in the queue (and their documents in a directory, if one is given).

Per job: the entry is read (``XREADGROUP``) or claimed from a dead worker (``XAUTOCLAIM``);
while the job runs the worker refreshes its entries every ``claim_idle / 3`` s, so no one
claims them from a live worker; when the answer is complete the document is committed
(atomically, in ``out``) and then the result is recorded and the entry acknowledged in one
script. A job whose attempts all failed is left pending for another delivery, or moved to
the dead-letter stream once delivered ``max_deliveries`` times (at once for a failure retrying
cannot fix: cost guard, budget, a 4xx other than 429).

A worker killed at any moment loses nothing recorded: its entries are claimed by another
worker after ``claim_idle`` s and done again (a request in flight at the kill is sent twice;
its result is recorded once).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import attrs
import trio

from pipeline import ConfigError, lone_exception_unwrapped

from ._jobs import InvalidJob, InvalidLine, Job
from ._limits import Budget, Limiter, LocalLimiter
from ._outputs import JobFailure, JobOutcome, _write_document, error_record, result_record
from ._queue import RedisJobQueue, default_consumer
from ._runner import Batch, BatchConfig, BatchEvent, BatchStatistics, ProducerFactory

__all__ = ["Worker", "WorkerConfig"]

_FINAL_KINDS: Final = frozenset({"cost_limit", "budget"})


@attrs.frozen
class WorkerConfig:
    """How a worker takes part in a queue.

    ``consumer``: its name in the group (default ``HOST-PID``). ``claim_idle``: seconds an
    entry may go unrefreshed before another worker claims it. ``max_deliveries``: deliveries
    before a failing job goes to the dead-letter stream. ``until_empty``: stop when nothing is
    waiting or pending (else run until cancelled). ``block``: seconds one ``XREADGROUP`` waits.
    ``out``: a directory for the documents (``None``: they are only in the queue's results).
    """

    consumer: str = attrs.field(factory=default_consumer)
    claim_idle: float = 30.0
    max_deliveries: int = 3
    until_empty: bool = False
    block: float = 1.0
    out: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))

    def __attrs_post_init__(self) -> None:
        if not self.claim_idle > 0 or not self.block > 0:
            raise ConfigError("claim_idle and block must be > 0")
        if self.max_deliveries < 1:
            raise ConfigError(f"max_deliveries must be >= 1, got {self.max_deliveries}")


@attrs.define(eq=False)
class Worker:
    """One worker of a queue. ``async with worker.events() as events:`` runs it for the block
    and hands out the :class:`Batch`'s events (the last is :class:`BatchEnded` when
    ``until_empty`` and the queue is finished); ``await worker.run()`` runs it to the end."""

    queue: RedisJobQueue
    producers: ProducerFactory
    limiter: Limiter = attrs.field(factory=LocalLimiter)
    config: BatchConfig = attrs.field(factory=BatchConfig)
    worker: WorkerConfig = attrs.field(factory=WorkerConfig)
    budget: Budget | None = None
    """The queue's token budget, shared with the other workers (:func:`open_redis_budget` on
    the queue's client and name); a job it refuses is dead-lettered with the reason."""
    _inflight: dict[str, str] = attrs.field(factory=dict, init=False)
    """custom_id -> the entry id being worked on."""
    _batch: Batch = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._batch = Batch(
            self.producers, _QueueLedger(self), self.limiter, self.config, budget=self.budget
        )

    def statistics(self) -> BatchStatistics:
        return self._batch.statistics()

    async def run(self) -> BatchStatistics:
        async with self.events() as events:
            async for _ in events:
                pass
        return self.statistics()

    @contextlib.asynccontextmanager
    async def events(self) -> AsyncIterator[trio.MemoryReceiveChannel[BatchEvent]]:
        if self.worker.out is not None:
            await trio.to_thread.run_sync(self._make_out)
        with lone_exception_unwrapped():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_alive)
                try:
                    async with self._batch.events(self._jobs()) as events:
                        yield events
                finally:
                    nursery.cancel_scope.cancel()

    def _make_out(self) -> None:
        assert self.worker.out is not None
        self.worker.out.mkdir(parents=True, exist_ok=True)

    async def _keep_alive(self) -> None:
        while True:
            await trio.sleep(self.worker.claim_idle / 3)
            await self.queue.keep(self.worker.consumer, list(self._inflight.values()))

    async def _jobs(self) -> AsyncIterator[Job | InvalidLine]:
        w = self.worker
        last_claim = -float("inf")
        while True:
            deliveries = []
            if trio.current_time() - last_claim >= w.claim_idle / 4:
                last_claim = trio.current_time()
                deliveries = await self.queue.claim(
                    w.consumer, min_idle=w.claim_idle, max_deliveries=w.max_deliveries
                )
            if not deliveries:
                deliveries = await self.queue.read(w.consumer, block=w.block)
            for delivery in deliveries:
                job = delivery.job
                if isinstance(job, InvalidJob):  # not written by RedisJobQueue.submit
                    failure = JobFailure(job.kind, str(job))
                    await self.queue.fail(
                        delivery.id,
                        "",
                        error_record(Job("", [{"role": "user", "content": ""}], "x"), failure),
                        max_deliveries=w.max_deliveries,
                        final=True,
                        consumer=w.consumer,
                    )
                    continue
                self._inflight[job.custom_id] = delivery.id
                yield job
            if not deliveries and w.until_empty and (await self.queue.counts()).finished:
                return


@attrs.define(eq=False)
class _QueueLedger:
    """The :class:`Ledger` of a worker: the queue records outcomes (its ``done`` script skips
    a job recorded done already, so ``is_done`` has nothing to say before the request)."""

    _worker: Worker

    def is_done(self, custom_id: str) -> bool:
        return False

    @property
    def spent_tokens(self) -> int:
        return 0

    async def done(self, job: Job, outcome: JobOutcome) -> None:
        out = self._worker.worker.out
        if out is not None:
            await trio.to_thread.run_sync(_write_document, out / job.output, outcome.text)
        entry = self._worker._inflight[job.custom_id]
        record = result_record(job, outcome)
        record["llmpipe"]["worker"] = self._worker.worker.consumer
        with trio.CancelScope(shield=True):
            await self._worker.queue.done(entry, job, record)
        self._worker._inflight.pop(job.custom_id, None)

    async def failed(self, job: Job, failure: JobFailure) -> None:
        w = self._worker
        entry = w._inflight[job.custom_id]
        final = failure.kind in _FINAL_KINDS or not failure.retryable
        with trio.CancelScope(shield=True):
            await w.queue.fail(
                entry,
                job.custom_id,
                error_record(job, failure),
                max_deliveries=w.worker.max_deliveries,
                final=final,
                consumer=w.worker.consumer,
            )
        w._inflight.pop(job.custom_id, None)
