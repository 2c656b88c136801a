"""The batch runner: every job of a source through one set of limits, into a ledger.

Per job, in order: skip it if the ledger has it done; check the :class:`CostGuard`; then per
attempt take the estimate (prompt estimate + output limit) out of the token budget, wait for a
permit from the limiter, stream the answer, give the permit back with the usage reported.
Retryable failures (connection, timeout, 429, 5xx) are tried again with the one backoff
(:class:`pipeline.producers.RetryPolicy`); a 429 pauses the limiter for its ``retry-after``,
so every job waits, not only the one that got it. A job that keeps failing is recorded failed
with its reason and the others go on. Nothing is sent for a job over the guard or the budget.

The producers' own retries must be off (``open_backend(..., retry=RetryPolicy(max_attempts=1))``,
as :func:`backend_producers` expects): every request must pass the limiter.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, TypeAlias

import attrs
import trio

from pipeline import (
    Backoff,
    ConfigError,
    Done,
    Error,
    Event,
    LLMPipeError,
    Metadata,
    Producer,
    ProducerError,
    ProducerStatusError,
    TextDelta,
    Usage,
    lone_exception_unwrapped,
)
from pipeline.producers import (
    Backend,
    CostGuard,
    CostLimitError,
    RetryPolicy,
    estimate_tokens,
    translate_error,
)

from ._jobs import InvalidLine, Job, JobSource
from ._limits import (
    Budget,
    BudgetExhausted,
    Limiter,
    LimiterStatistics,
    LocalLimiter,
    Permit,
    TokenBudget,
)
from ._outputs import JobFailure, JobOutcome, Ledger

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "Batch",
    "BatchConfig",
    "BatchEnded",
    "BatchEvent",
    "BatchStatistics",
    "JobDone",
    "JobFailed",
    "JobRetrying",
    "JobSkipped",
    "JobStarted",
    "LineSkipped",
    "ProducerFactory",
    "RateLimited",
    "backend_producers",
]

DEFAULT_MAX_TOKENS: Final = 256
"""The output limit of a job that gives none (every request is sent with one, so that its
token estimate is an upper bound)."""

ProducerFactory: TypeAlias = Callable[[Job], Producer]
"""Builds the producer of one attempt of a job (``job.max_tokens`` is always set). Its own
retries must be off: the runner retries, through the limiter."""


def backend_producers(backend: Backend) -> ProducerFactory:
    """The :data:`ProducerFactory` of a :class:`pipeline.producers.Backend` (open it with
    ``retry=RetryPolicy(max_attempts=1)``)."""

    def make(job: Job) -> Producer:
        return backend.producer(
            job.messages, model=job.model, max_tokens=job.max_tokens, temperature=job.temperature
        )

    return make


# -- events ------------------------------------------------------------------------------------


@attrs.frozen
class JobStarted:
    """A request for the job was admitted by the limiter and is being sent."""

    custom_id: str
    attempt: int


@attrs.frozen
class JobRetrying:
    """An attempt failed with a retryable error; the job is tried again after ``delay`` s."""

    custom_id: str
    attempt: int
    delay: float
    reason: str


@attrs.frozen
class RateLimited:
    """The provider answered 429: every job waits ``pause`` seconds."""

    custom_id: str
    pause: float


@attrs.frozen
class JobDone:
    """The job's document is committed and the job recorded done."""

    custom_id: str
    output: str
    input_tokens: int
    output_tokens: int
    attempts: int


@attrs.frozen
class JobFailed:
    """The job is recorded failed: ``kind`` and ``message`` say why."""

    custom_id: str
    kind: str
    message: str
    attempts: int


@attrs.frozen
class JobSkipped:
    """The job was already done (by an earlier run): nothing sent."""

    custom_id: str


@attrs.frozen
class LineSkipped:
    """A line of the jobs source is not a job (``line`` from 1)."""

    line: int
    message: str


@attrs.frozen
class BatchStatistics:
    """A snapshot of a batch's progress. ``total`` is what the caller said (``None``: not
    known); ``finished`` = done + failed + skipped + invalid. Times are ``trio.current_time()``."""

    total: int | None
    done: int
    failed: int
    skipped: int
    invalid: int
    running: int
    requests: int
    retries: int
    rate_limited: int
    input_tokens: int
    output_tokens: int
    started_at: float
    now: float
    limiter: LimiterStatistics

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.skipped + self.invalid

    @property
    def elapsed(self) -> float:
        return self.now - self.started_at


@attrs.frozen
class BatchEnded:
    """The last event: every job of the source is done, failed or skipped."""

    statistics: BatchStatistics


BatchEvent: TypeAlias = (
    JobStarted
    | JobRetrying
    | RateLimited
    | JobDone
    | JobFailed
    | JobSkipped
    | LineSkipped
    | BatchEnded
)


@attrs.frozen
class BatchConfig:
    """How a batch runs.

    ``workers``: jobs handled at once in this process (the limiter's ``concurrency`` bounds the
    requests in flight; more workers than that only queue). ``retry``: attempts per job and
    the backoff between them. ``cost_guard``: per-job limits checked before anything is sent.
    ``max_tokens_total``: a budget for the batch, counting what earlier runs of the same
    ledger spent (``None``: none). ``default_max_tokens``: the output limit of a job that
    gives none. ``events_buffer``: events queued for a slow reader of :meth:`Batch.events`
    before the batch waits for it.
    """

    workers: int = 16
    retry: RetryPolicy = attrs.field(
        factory=lambda: RetryPolicy(max_attempts=6, backoff=Backoff(initial=0.5, maximum=30.0))
    )
    cost_guard: CostGuard | None = None
    max_tokens_total: int | None = None
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    events_buffer: int = 256

    def __attrs_post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.default_max_tokens < 1:
            raise ConfigError(f"default_max_tokens must be >= 1, got {self.default_max_tokens}")
        if self.max_tokens_total is not None and self.max_tokens_total < 1:
            raise ConfigError(f"max_tokens_total must be >= 1, got {self.max_tokens_total}")
        if self.events_buffer < 0:
            raise ConfigError(f"events_buffer must be >= 0, got {self.events_buffer}")


class _Failed(Exception):
    def __init__(self, failure: JobFailure, used: int | None, retry_after: float | None) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.used = used
        self.retry_after = retry_after


def _failure(exc: Exception, attempt: int) -> _Failed:
    """``exc`` (from an attempt) as a failure, with the tokens it used: 0 when the provider
    refused with a status (nothing was generated), unknown otherwise."""
    err: LLMPipeError = exc if isinstance(exc, LLMPipeError) else translate_error(exc)
    status = err.status_code if isinstance(err, ProducerStatusError) else None
    retry_after = err.retry_after if isinstance(err, ProducerStatusError) else None
    failure = JobFailure(err.kind, str(err), status, err.retryable, attempt)
    return _Failed(failure, 0 if status is not None else None, retry_after)


@attrs.define(eq=False)
class Batch:
    """A batch: jobs from a :class:`JobSource`, answered by ``producers`` within ``limiter``'s
    limits, recorded in ``ledger`` (a :class:`BatchDirectory`, or any :class:`Ledger`).

    ``await batch.run(jobs)`` runs to the end and returns the final :class:`BatchStatistics`;
    ``async with batch.events(jobs) as events:`` runs it in the background and hands out its
    progress events (:data:`BatchEvent`; the last is :class:`BatchEnded`). Leaving that block
    early cancels the batch: the requests in flight are abandoned, nothing is recorded for them,
    and a later run does them again. :meth:`statistics` is cheap, from any task. One run per
    object.
    """

    producers: ProducerFactory
    ledger: Ledger
    limiter: Limiter = attrs.field(factory=LocalLimiter)
    config: BatchConfig = attrs.field(factory=BatchConfig)
    rng: random.Random = attrs.field(factory=random.Random)
    """The backoff's jitter source (seed it for reproducible tests)."""
    budget: Budget | None = None
    """The token budget (a shared one, for workers); ``None``: a :class:`TokenBudget` of
    ``config.max_tokens_total``, if set, counting what the ledger's earlier runs spent."""
    _total: int | None = attrs.field(default=None, init=False)
    _counts: dict[str, int] = attrs.field(factory=dict, init=False)
    _started_at: float | None = attrs.field(default=None, init=False)
    _budget: Budget | None = attrs.field(default=None, init=False)
    _send: trio.MemorySendChannel[BatchEvent] | None = attrs.field(default=None, init=False)

    def statistics(self) -> BatchStatistics:
        now = trio.current_time()
        c = self._counts.get
        return BatchStatistics(
            total=self._total,
            done=c("done", 0),
            failed=c("failed", 0),
            skipped=c("skipped", 0),
            invalid=c("invalid", 0),
            running=c("running", 0),
            requests=c("requests", 0),
            retries=c("retries", 0),
            rate_limited=c("rate_limited", 0),
            input_tokens=c("input_tokens", 0),
            output_tokens=c("output_tokens", 0),
            started_at=now if self._started_at is None else self._started_at,
            now=now,
            limiter=self.limiter.statistics(),
        )

    async def run(self, jobs: JobSource, *, total: int | None = None) -> BatchStatistics:
        """Run every job of ``jobs`` (``total``: how many there are, for progress)."""
        if self._started_at is not None:
            raise RuntimeError("a Batch runs once")
        self._started_at = trio.current_time()
        self._total = total
        self._budget = self.budget
        if self._budget is None and self.config.max_tokens_total is not None:
            self._budget = TokenBudget(self.config.max_tokens_total, self.ledger.spent_tokens)
        send, receive = trio.open_memory_channel[Job](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._feed, jobs, send)
            async with receive:
                for _ in range(self.config.workers):
                    nursery.start_soon(self._work, receive.clone())
        stats = self.statistics()
        await self._event(BatchEnded(stats))
        return stats

    @contextlib.asynccontextmanager
    async def events(
        self, jobs: JobSource, *, total: int | None = None
    ) -> AsyncIterator[trio.MemoryReceiveChannel[BatchEvent]]:
        """Run the batch for the block's duration, handing out its events in order. Read
        them: past ``config.events_buffer`` queued events the batch waits for the reader.
        An exception of the batch comes out of the block as itself."""
        send, receive = trio.open_memory_channel[BatchEvent](self.config.events_buffer)
        self._send = send

        async def run() -> None:
            async with send:
                await self.run(jobs, total=total)

        with lone_exception_unwrapped():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                try:
                    async with receive:
                        yield receive
                finally:
                    nursery.cancel_scope.cancel()

    # -- inside ------------------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        self._counts[name] = self._counts.get(name, 0) + n

    async def _event(self, event: BatchEvent) -> None:
        if self._send is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._send.send(event)

    async def _feed(self, jobs: JobSource, send: trio.MemorySendChannel[Job]) -> None:
        iterator = jobs.__aiter__()
        try:
            async with send:
                async for item in iterator:
                    if isinstance(item, InvalidLine):
                        self._count("invalid")
                        await self._event(LineSkipped(item.line, item.message))
                    else:
                        await send.send(item)
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()

    async def _work(self, receive: trio.MemoryReceiveChannel[Job]) -> None:
        async with receive:
            async for job in receive:
                await self._job(job)

    async def _job(self, job: Job) -> None:
        if self.ledger.is_done(job.custom_id):
            self._count("skipped")
            await self._event(JobSkipped(job.custom_id))
            return
        max_tokens = job.max_tokens or self.config.default_max_tokens
        job = attrs.evolve(job, max_tokens=max_tokens)
        try:
            guard = self.config.cost_guard or CostGuard()
            estimate = guard.check(job.prompt_texts(), max_tokens) + max_tokens
        except CostLimitError as exc:
            await self._fail(job, JobFailure(exc.kind, str(exc)))
            return
        retry = self.config.retry
        attempt = 0
        while True:
            attempt += 1
            try:
                outcome = await self._attempt(job, attempt, estimate)
            except _Failed as failed:
                failure = failed.failure
                if failure.kind in ("cost_limit", "budget"):
                    await self._fail(job, failure)
                    return
                hint = failed.retry_after
                if failure.status_code == 429:
                    pause = hint if hint is not None else retry.backoff.delay(attempt - 1)
                    self._count("rate_limited")
                    await self.limiter.pause(pause)
                    await self._event(RateLimited(job.custom_id, pause))
                if not failure.retryable or attempt >= retry.max_attempts:
                    await self._fail(job, failure)
                    return
                # After a 429 the limiter's pause already holds every job back.
                delay = (
                    0.0
                    if failure.status_code == 429
                    else retry.backoff.delay(attempt - 1, hint, rng=self.rng)
                )
                self._count("retries")
                await self._event(JobRetrying(job.custom_id, attempt, delay, failure.message))
                await trio.sleep(delay)
                continue
            await self.ledger.done(job, outcome)
            self._count("done")
            self._count("input_tokens", outcome.input_tokens)
            self._count("output_tokens", outcome.output_tokens)
            await self._event(
                JobDone(
                    job.custom_id, job.output, outcome.input_tokens, outcome.output_tokens, attempt
                )
            )
            return

    async def _fail(self, job: Job, failure: JobFailure) -> None:
        await self.ledger.failed(job, failure)
        self._count("failed")
        await self._event(JobFailed(job.custom_id, failure.kind, failure.message, failure.attempts))

    async def _attempt(self, job: Job, attempt: int, estimate: int) -> JobOutcome:
        """One request, inside the budget and a permit; raises :class:`_Failed`."""
        reservation: Permit | None = None
        if self._budget is not None:
            try:
                reservation = await self._budget.reserve(estimate)
            except BudgetExhausted as exc:
                failure = JobFailure(exc.kind, str(exc), attempts=attempt - 1)
                raise _Failed(failure, 0, None) from exc
        used: int | None = None
        try:
            try:
                permit = await self.limiter.acquire(estimate)
            except CostLimitError as exc:
                used = 0
                raise _Failed(
                    JobFailure(exc.kind, str(exc), attempts=attempt - 1), 0, None
                ) from exc
            self._count("running")
            self._count("requests")
            try:
                await self._event(JobStarted(job.custom_id, attempt))
                try:
                    outcome = await self._stream(job, attempt, estimate)
                except Exception as exc:
                    failed = _failure(exc, attempt)
                    used = failed.used
                    raise failed from exc
                used = outcome.total_tokens
                return outcome
            finally:
                self._count("running", -1)
                with trio.CancelScope(shield=True):
                    await permit.release(used)
        finally:
            if reservation is not None:
                with trio.CancelScope(shield=True):
                    await reservation.release(used)

    async def _stream(self, job: Job, attempt: int, estimate: int) -> JobOutcome:
        parts: list[str] = []
        found: dict[type[Any], Event] = {}

        async def emit(event: Event) -> None:
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, Usage | Metadata | Done | Error):
                found.setdefault(type(event), event)

        await self.producers(job).stream(emit)
        error = found.get(Error)
        if isinstance(error, Error):
            raise _StreamError(error)
        text = "".join(parts)
        usage = found.get(Usage)
        meta = found.get(Metadata)
        done = found.get(Done)
        if isinstance(usage, Usage):
            tokens_in, tokens_out = usage.input_tokens, usage.output_tokens
        else:  # no usage reported: the estimate of the prompt, and of what came back
            tokens_in = estimate - (job.max_tokens or 0)
            tokens_out = estimate_tokens(text)
        return JobOutcome(
            text,
            tokens_in,
            tokens_out,
            model=meta.model if isinstance(meta, Metadata) else (job.model or ""),
            response_id=meta.response_id if isinstance(meta, Metadata) else "",
            finish_reason=done.stop_reason if isinstance(done, Done) else None,
            attempts=attempt,
        )


class _StreamError(ProducerError):
    """An ``Error`` event a producer emitted instead of raising."""

    def __init__(self, event: Error) -> None:
        super().__init__(event.message, retryable=event.retryable)
        self.kind = event.kind
