"""The Redis queue side of ``llmpipe batch``: ``--submit``, ``status``, ``collect`` and
``requeue`` (``llmpipe worker`` runs the jobs)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

import attrs

from ..batch import ERRORS_FILE, Job, JobsFile, open_directory

if TYPE_CHECKING:
    from ..batch import RedisJobQueue
    from ._main import IO

__all__ = ["add_queue_options", "collect", "open_queue", "requeue", "show_status", "submit"]

_PAGE = 512  # jobs per submit call


def add_queue_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis", metavar="URL", help="the Redis server of the queue (redis://HOST:PORT/DB)"
    )
    parser.add_argument(
        "--queue", default="default", help="the queue's name on that server (default: default)"
    )


def open_queue(args: argparse.Namespace) -> RedisJobQueue:
    """The queue the options name (enter it: ``async with open_queue(args) as queue``)."""
    from ..batch import RedisJobQueue  # coredis: only when a queue is used

    return RedisJobQueue(args.redis, name=args.queue)


async def submit(args: argparse.Namespace, io: IO) -> int:
    """Put the jobs file's jobs on the queue; report invalid lines; return at once."""
    added = valid = invalid = 0
    async with open_queue(args) as queue:
        page: list[Job] = []
        async for item in JobsFile(args.jobs):
            if isinstance(item, Job):
                valid += 1
                page.append(item)
                if len(page) >= _PAGE:
                    added += await queue.submit(page)
                    page = []
            else:
                invalid += 1
                print(f"llmpipe batch: {args.jobs}:{item.line}: {item.message}", file=io.err)
        if page:
            added += await queue.submit(page)
        if args.max_tokens_total is not None:
            await queue.set_budget(args.max_tokens_total)
    summary = {"type": "submitted", "queue": args.queue, "added": added, "already": valid - added}
    if args.json:
        print(json.dumps({**summary, "invalid": invalid}), file=io.out, flush=True)
    else:
        print(
            f"{added} jobs submitted to queue {args.queue!r} ({valid - added} were already on "
            f"it, {invalid} invalid lines); run them with: llmpipe worker --redis URL"
            + ("" if args.queue == "default" else f" --queue {args.queue}"),
            file=io.out,
            flush=True,
        )
    return 0 if invalid == 0 else 1


async def show_status(args: argparse.Namespace, io: IO) -> int:
    """The queue's counts: one line, or one JSON object with ``--json``."""
    async with open_queue(args) as queue:
        counts = await queue.counts()
    fields: dict[str, Any] = attrs.asdict(counts)
    if args.json:
        print(json.dumps({"queue": args.queue, **fields, "finished": counts.finished}), file=io.out)
    else:
        print(
            f"queue {args.queue!r}: {counts.submitted} submitted, {counts.done} done, "
            f"{counts.dead} dead-lettered, {counts.pending} running or to be retried, "
            f"{counts.waiting} waiting; {counts.failing} failing; {counts.requeued} requeued; "
            f"{counts.consumers} workers seen; {counts.spent} tokens used"
            + ("" if counts.budget is None else f" of a budget of {counts.budget}"),
            file=io.out,
            flush=True,
        )
    return 0


async def requeue(args: argparse.Namespace, io: IO) -> int:
    """Put the dead-lettered jobs back on the queue (for the workers to try again)."""
    async with open_queue(args) as queue:
        requeued = await queue.requeue()
        counts = await queue.counts()
    if args.json:
        print(json.dumps({"type": "requeued", "queue": args.queue, "requeued": requeued}),
              file=io.out)  # fmt: skip
    else:
        print(
            f"{requeued} dead-lettered jobs put back on queue {args.queue!r} "
            f"({counts.waiting} waiting); run them with: llmpipe worker --redis URL",
            file=io.out,
            flush=True,
        )
    return 0


async def collect(args: argparse.Namespace, io: IO) -> int:
    """Write the queue's results (documents and ``results.jsonl``) and dead letters
    (``errors.jsonl``) into ``--out``; a job already there is left alone, so it can run
    again while workers go on."""
    written = dead = 0
    async with open_queue(args) as queue, open_directory(args.out) as directory:
        async for record in queue.results():
            written += await directory.add_result(record)
        async for record in queue.dead_letters():
            dead += await directory.add_error(record)
        counts = await queue.counts()
    if args.json:
        print(
            json.dumps({"type": "collected", "documents": written, "dead": dead,
                        "finished": counts.finished}),
            file=io.out,
        )  # fmt: skip
    else:
        left = "" if counts.finished else (
            f"; {counts.pending + counts.waiting} jobs not finished yet (collect again later)"
        )  # fmt: skip
        failures = f"; {dead} dead-lettered jobs in {args.out}/{ERRORS_FILE}" if dead else ""
        print(f"{written} documents collected into {args.out}{failures}{left}", file=io.out)
    return 0 if dead == 0 else 1
