"""``llmpipe worker --redis URL``: run the jobs of a Redis queue (``llmpipe batch --submit``),
on any number of machines, sharing the rate limits and the token budget (``llmpipe batch
--submit --max-tokens-total N``) through Redis.

Quiet except for one-line reports (invalid entries) and a summary at the end; ``--json``
prints one JSON object per event (as ``llmpipe batch --json``). Runs until Ctrl-C/SIGTERM, or
with ``--until-empty`` until nothing is waiting or pending on the queue.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import ConfigError
from pipeline.producers import RetryPolicy

from ..batch import DEFAULT_WINDOW
from ._batch import _duration, _producers, add_job_options, batch_config, event_json
from ._providers import add_provider_options, backend_from_args
from ._queue import add_queue_options, open_queue

if TYPE_CHECKING:
    from ._main import IO

__all__ = ["NAME", "add_parser", "run"]

NAME = "worker"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        NAME,
        help="run the jobs of a Redis queue (llmpipe batch --submit), on any number of machines",
        description="Take jobs from a Redis queue (XREADGROUP), run them inside rate limits "
        "shared by every worker, record each result back (XACK after the document is "
        "written); claim the jobs of a worker that died (XAUTOCLAIM); move a job delivered "
        "too many times to the dead-letter stream.",
    )
    add_queue_options(parser)
    parser.add_argument("--out", metavar="DIR", help="also write the documents into DIR")
    add_provider_options(parser)
    parser.add_argument(
        "--concurrency", type=int, default=8, help="this worker's requests in flight (8)"
    )
    parser.add_argument("--rpm", type=int, help="requests per minute, shared by all workers")
    parser.add_argument("--tpm", type=int, help="tokens per minute, shared by all workers")
    parser.add_argument(
        "--window",
        type=float,
        default=DEFAULT_WINDOW,
        help="seconds the --rpm/--tpm limits span (default 60; tests scale it down)",
    )
    add_job_options(parser)
    parser.add_argument(
        "--max-deliveries",
        type=int,
        default=3,
        help="deliveries before a failing job goes to the dead-letter stream (3)",
    )
    parser.add_argument(
        "--claim-idle",
        type=float,
        default=30.0,
        help="seconds without news from a worker before its jobs are claimed (30)",
    )
    parser.add_argument("--consumer", help="this worker's name in the group (default HOST-PID)")
    parser.add_argument(
        "--until-empty", action="store_true", help="stop when nothing is waiting or pending"
    )
    return parser


def _check(args: argparse.Namespace) -> None:
    if args.redis is None:
        raise ConfigError("--redis URL is required")
    for option in ("concurrency", "rpm", "tpm", "attempts", "max_deliveries"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ConfigError(f"--{option.replace('_', '-')} must be >= 1")
    if not args.window > 0 or not args.claim_idle > 0:
        raise ConfigError("--window and --claim-idle must be > 0")


async def run(args: argparse.Namespace, io: IO) -> int:
    _check(args)
    from ..batch import Worker, WorkerConfig, open_redis_budget, open_redis_limiter

    config = batch_config(args)
    options: dict[str, Any] = {"max_deliveries": args.max_deliveries}
    if args.consumer:
        options["consumer"] = args.consumer
    settings = WorkerConfig(
        claim_idle=args.claim_idle,
        until_empty=args.until_empty,
        out=None if args.out is None else Path(args.out),
        **options,
    )
    async with (
        backend_from_args(args, retry=RetryPolicy(max_attempts=1)) as backend,
        open_queue(args) as queue,
        open_redis_limiter(
            queue.client,
            name=args.queue,
            concurrency=args.concurrency,
            requests_per_minute=args.rpm,
            tokens_per_minute=args.tpm,
            window=args.window,
        ) as limiter,
        open_redis_budget(queue.client, name=args.queue) as budget,
    ):
        producers = _producers(backend, args.system)
        worker = Worker(queue, producers, limiter, config, settings, budget=budget)
        async with worker.events() as events:
            async for event in events:
                if args.json:
                    print(event_json(event), file=io.out, flush=True)
        counts = await queue.counts()
    stats = worker.statistics()
    if not args.json:
        print(
            f"worker {settings.consumer}: {stats.done} done, {stats.failed} failed deliveries, "
            f"{stats.requests} requests in {_duration(stats.elapsed)}; queue {args.queue!r}: "
            f"{counts.done} done, {counts.dead} dead-lettered, "
            f"{counts.pending + counts.waiting} left",
            file=io.out,
            flush=True,
        )
    return 0
