"""``llmpipe batch JOBS.jsonl --out DIR``: one document per job, inside the provider's limits.

Progress goes to standard error with rich when it is a terminal (jobs done/failed/running,
tokens per second, requests per minute against the limit, ETA), nothing when it is not; a
summary at the end on standard output, or with ``--json`` one JSON object per event and the
summary as the last. Run the same command again to resume: jobs recorded done are skipped.

With ``--redis URL``: ``--submit`` puts the jobs on the queue and returns (``llmpipe worker``
runs them, on any machine); ``llmpipe batch status --redis URL`` shows the queue's counts;
``llmpipe batch collect --redis URL --out DIR`` writes what the workers recorded (documents,
``results.jsonl``, the dead-lettered jobs in ``errors.jsonl``) into DIR; ``llmpipe batch
requeue --redis URL`` puts the dead-lettered jobs back on the queue. ``--max-tokens-total``
with ``--submit`` is the queue's budget, shared by every worker.

With ``--via openai-batch``: the jobs go to the provider's Batch API in one file, the batch is
polled every ``--poll-interval`` seconds, and its output and error files become the same
outputs (the limits do not apply: the provider schedules a batch itself).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import attrs
import trio

from pipeline import ConfigError, Producer
from pipeline.producers import CostGuard, RetryPolicy

from ..batch import (
    ERRORS_FILE,
    Batch,
    BatchConfig,
    BatchEvent,
    BatchStatistics,
    InvalidLine,
    Job,
    JobsFile,
    JobSource,
    LineSkipped,
    LocalLimiter,
    ProducerFactory,
    ProviderBatchEvent,
    ProviderBatchPolled,
    ProviderBatchSubmitted,
    backend_producers,
    count_lines,
    open_directory,
    run_provider_batch,
)
from ._providers import add_provider_options, backend_from_args
from ._queue import add_queue_options, collect, requeue, show_status, submit

if TYPE_CHECKING:
    from pipeline.producers import Backend

    from ._main import IO

__all__ = ["NAME", "add_parser", "run", "summary_line"]

NAME = "batch"
VIAS = ("requests", "openai-batch")
ACTIONS = ("status", "collect", "requeue")
"""Words in place of JOBS.jsonl that act on a queue (``--redis``) instead."""

_REFRESH = 0.25  # seconds between two redraws of the progress display


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        NAME,
        help="generate one document per job of a JSON Lines file, inside rate limits",
        description="Generate one document per job of JOBS (JSON Lines: the OpenAI Batch "
        "request format, or {id, prompt|messages, model, max_tokens, output}) into DIR, with "
        "results.jsonl and errors.jsonl in the OpenAI Batch output format. Run it again to "
        "resume: jobs already done are skipped.",
    )
    parser.add_argument(
        "jobs",
        metavar="JOBS.jsonl",
        help="the jobs file; or, with --redis, 'status' (the queue's counts), 'collect' "
        "(write what the workers recorded into --out) or 'requeue' (put the dead-lettered "
        "jobs back on the queue)",
    )
    parser.add_argument("--out", metavar="DIR", help="where the documents go")
    add_queue_options(parser)
    parser.add_argument(
        "--submit",
        action="store_true",
        help="with --redis: put the jobs on the queue and return (llmpipe worker runs them)",
    )
    add_provider_options(parser)
    parser.add_argument(
        "--concurrency", type=int, default=8, help="requests in flight at most (default 8)"
    )
    parser.add_argument("--rpm", type=int, help="requests per minute at most")
    parser.add_argument("--tpm", type=int, help="tokens per minute at most (prompt + output)")
    parser.add_argument(
        "--via",
        choices=VIAS,
        default="requests",
        help="requests (default: one streamed request per job, inside the limits) or "
        "openai-batch (upload the jobs to the provider's Batch API: half the price, hours of "
        "latency; --provider openai, --base-url and --model apply)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=30.0,
        help="with --via openai-batch: seconds between two looks at the batch (default 30)",
    )
    parser.add_argument(
        "--max-tokens-total",
        type=int,
        help="never send a request that could take the batch's tokens over this (all runs; "
        "with --submit: shared by every worker of the queue)",
    )
    add_job_options(parser)
    return parser


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """The per-job options ``batch`` and ``worker`` share: cost guard, attempts, ``--json``."""
    parser.add_argument(
        "--max-input-tokens", type=int, help="fail a job whose prompt is larger (nothing sent)"
    )
    parser.add_argument(
        "--max-output-tokens",
        type=int,
        help="fail a job that asks for more output tokens (nothing sent)",
    )
    parser.add_argument(
        "--attempts", type=int, default=6, help="attempts per job for retryable errors (6)"
    )
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per event on standard output"
    )


def batch_config(args: argparse.Namespace, **options: Any) -> BatchConfig:
    """The :class:`BatchConfig` of the options of :func:`add_job_options` (and ``options``)."""
    guard = None
    if args.max_input_tokens is not None or args.max_output_tokens is not None:
        guard = CostGuard(args.max_input_tokens, args.max_output_tokens)
    return BatchConfig(
        workers=args.concurrency,
        retry=attrs.evolve(BatchConfig().retry, max_attempts=args.attempts),
        cost_guard=guard,
        default_max_tokens=args.max_tokens,
        **options,
    )


def _check(args: argparse.Namespace) -> str:
    """Check the options; return what to do: ``run``, ``submit``, ``status`` or ``collect``."""
    for option in ("concurrency", "rpm", "tpm", "max_tokens_total", "attempts"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ConfigError(f"--{option.replace('_', '-')} must be >= 1")
    is_file = Path(args.jobs).is_file()
    if args.jobs in ACTIONS and not is_file:
        if args.redis is None:
            raise ConfigError(f"'llmpipe batch {args.jobs}' needs --redis URL")
        if args.jobs == "collect" and args.out is None:
            raise ConfigError("'llmpipe batch collect' needs --out DIR")
        return str(args.jobs)
    if not is_file:
        raise ConfigError(f"{args.jobs}: no such jobs file")
    if args.redis is not None and not args.submit:
        raise ConfigError(
            "with --redis, add --submit (llmpipe worker runs the jobs), or use "
            "'llmpipe batch status' / 'llmpipe batch collect'"
        )
    if args.submit and args.redis is None:
        raise ConfigError("--submit needs --redis URL")
    if args.out is None and not args.submit:
        raise ConfigError("--out DIR is required")
    if args.via == "openai-batch":
        if args.submit or args.provider not in (None, "openai") or args.scripted is not None:
            raise ConfigError("--via openai-batch sends to OpenAI's Batch API (--provider openai)")
        if not args.poll_interval > 0:
            raise ConfigError("--poll-interval must be > 0")
        return "openai-batch"
    return "submit" if args.submit else "run"


def _producers(backend: Backend, system: str | None) -> ProducerFactory:
    make = backend_producers(backend)
    if not system:
        return make

    def with_system(job: Job) -> Producer:
        return make(_with_system(job, system))

    return with_system


def _event_type(event: BatchEvent | ProviderBatchEvent) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(event).__name__).lower()


def event_json(event: BatchEvent | ProviderBatchEvent) -> str:
    """One event as a JSON object with its ``type`` (``job_done``, ``batch_ended``, ...)."""
    fields: dict[str, Any] = attrs.asdict(event)
    return json.dumps({"type": _event_type(event), **fields}, ensure_ascii=False)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def status_text(stats: BatchStatistics) -> str:
    """The progress display's text: counts, tokens per second, requests per minute against
    the limit, ETA."""
    limiter = stats.limiter
    per_minute = 60.0 / limiter.window
    rpm = f"{limiter.requests * per_minute:.0f}"
    if limiter.requests_per_minute is not None:
        rpm += f"/{limiter.requests_per_minute}"
    elapsed = max(stats.elapsed, 1e-9)
    tokens = (stats.input_tokens + stats.output_tokens) / elapsed
    parts = [
        f"done {stats.done} failed {stats.failed} running {stats.running}",
        f"{tokens:.0f} tok/s",
        f"{rpm} req/min",
    ]
    if stats.total is not None:
        worked = stats.done + stats.failed
        left = stats.total - stats.finished
        if worked and left > 0:
            parts.append(f"ETA {_duration(left * elapsed / worked)}")
    if limiter.paused_for > 0:
        parts.append(f"paused {limiter.paused_for:.0f} s (429)")
    return " · ".join(parts)


def summary_line(stats: BatchStatistics, out: str) -> str:
    """What ``llmpipe batch`` prints at the end."""
    text = (
        f"{stats.done} done, {stats.failed} failed, {stats.skipped} already done, "
        f"{stats.invalid} invalid lines; {stats.input_tokens + stats.output_tokens} tokens, "
        f"{stats.requests} requests in {_duration(stats.elapsed)}"
    )
    if stats.failed:
        text += f"; the failures are in {Path(out) / ERRORS_FILE}"
    return text


@contextmanager
def _live(err: TextIO, total: int) -> Iterator[Any]:
    """A rich progress display on ``err`` (imported here: only a terminal needs it)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    progress = Progress(
        TextColumn("[bold]batch"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        console=Console(file=err),
        auto_refresh=False,
        transient=False,
    )
    with progress:
        progress.add_task("batch", total=total, status="starting")
        yield progress


def _show(progress: Any, stats: BatchStatistics) -> None:
    task = progress.task_ids[0]
    progress.update(task, completed=stats.finished, status=status_text(stats))
    progress.refresh()


async def run(args: argparse.Namespace, io: IO) -> int:
    action = _check(args)
    if action == "status":
        return await show_status(args, io)
    if action == "collect":
        return await collect(args, io)
    if action == "requeue":
        return await requeue(args, io)
    if action == "submit":
        return await submit(args, io)
    if action == "openai-batch":
        return await _via_openai_batch(args, io)
    config = batch_config(args, max_tokens_total=args.max_tokens_total)
    limiter = LocalLimiter(
        concurrency=args.concurrency, requests_per_minute=args.rpm, tokens_per_minute=args.tpm
    )
    total = await trio.to_thread.run_sync(count_lines, args.jobs)
    terminal = not args.json and io.err.isatty()
    async with (
        backend_from_args(args, retry=RetryPolicy(max_attempts=1)) as backend,
        open_directory(args.out) as directory,
    ):
        batch = Batch(_producers(backend, args.system), directory, limiter, config)
        async with batch.events(JobsFile(args.jobs), total=total) as events:
            if terminal:
                with _live(io.err, total) as progress:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_redraw, progress, batch)
                        await _consume(events, args, io)
                        nursery.cancel_scope.cancel()
                    _show(progress, batch.statistics())
            else:
                await _consume(events, args, io)
    stats = batch.statistics()
    if not args.json:
        print(summary_line(stats, args.out), file=io.out, flush=True)
    return 0 if stats.failed == 0 and stats.invalid == 0 else 1


async def _via_openai_batch(args: argparse.Namespace, io: IO) -> int:
    """``--via openai-batch``: the jobs through the provider's Batch API, into the same
    outputs; progress as lines on standard error (or ``--json`` events)."""
    import openai  # here: only this path needs the SDK's client

    def report(event: ProviderBatchEvent) -> None:
        if args.json:
            print(event_json(event), file=io.out, flush=True)
        elif isinstance(event, InvalidLine):
            print(f"llmpipe batch: {args.jobs}:{event.line}: {event.message}", file=io.err)
        elif isinstance(event, ProviderBatchSubmitted):
            verb = "resuming the batch submitted earlier:" if event.resumed else "submitted"
            print(f"llmpipe batch: {verb} {event.requests} jobs as {event.batch_id}", file=io.err)
        elif isinstance(event, ProviderBatchPolled):
            text = f"{event.batch_id}: {event.status}, {event.completed} done {event.failed} failed"
            print(f"llmpipe batch: {text}", file=io.err)

    jobs: JobSource = JobsFile(args.jobs)
    if args.system:
        jobs = _WithSystem(jobs, args.system)
    client = openai.AsyncOpenAI(base_url=args.base_url)
    try:
        async with open_directory(args.out) as directory:
            ended = await run_provider_batch(
                client,
                jobs,
                directory,
                model=args.model,
                max_tokens=args.max_tokens,
                poll_interval=args.poll_interval,
                report=report,
            )
    finally:
        await client.close()
    if not args.json:
        text = (
            f"{ended.done} done, {ended.failed} failed, {ended.skipped} already done, "
            f"{ended.invalid} invalid lines (batch {ended.batch_id}: {ended.status})"
        )
        if ended.failed:
            text += f"; the failures are in {Path(args.out) / ERRORS_FILE}"
        print(text, file=io.out, flush=True)
    return 0 if ended.failed == 0 and ended.invalid == 0 else 1


@attrs.define
class _WithSystem:
    """The jobs of ``jobs``, ``system`` first in those that have no system message."""

    jobs: JobSource
    system: str

    async def __aiter__(self) -> AsyncIterator[Job | InvalidLine]:
        async for item in self.jobs:
            if isinstance(item, Job):
                item = _with_system(item, self.system)
            yield item


def _with_system(job: Job, system: str) -> Job:
    if any(m.get("role") == "system" for m in job.messages):
        return job
    return attrs.evolve(job, messages=({"role": "system", "content": system}, *job.messages))


async def _redraw(progress: Any, batch: Batch) -> None:
    while True:
        _show(progress, batch.statistics())
        await trio.sleep(_REFRESH)


async def _consume(
    events: trio.MemoryReceiveChannel[BatchEvent], args: argparse.Namespace, io: IO
) -> None:
    async for event in events:
        if args.json:
            print(event_json(event), file=io.out, flush=True)
        elif isinstance(event, LineSkipped):
            print(f"llmpipe batch: {args.jobs}:{event.line}: {event.message}", file=io.err)
