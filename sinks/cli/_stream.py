"""``llmpipe stream PROMPT``: one answer to the terminal, and optionally to files."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import trio

from pipeline import ConfigError, Pipeline, PipelineStatistics, Route, Stage
from pipeline.text import AdaptiveChunker

from .. import EventLogSink, TerminalSink, TextFileSink
from ..files import check_writable
from ._providers import add_provider_options, backend_from_args, messages_from_args

if TYPE_CHECKING:
    from ._main import IO

__all__ = ["NAME", "add_parser", "run"]

NAME = "stream"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        NAME, help="stream an answer to the terminal (and files)"
    )
    parser.add_argument("prompt", nargs="?", default="", help="the prompt")
    add_provider_options(parser)
    parser.add_argument("--out", metavar="FILE", help="also write the text to FILE (atomically)")
    parser.add_argument("--events", metavar="FILE", help="also write every event to FILE (JSONL)")
    parser.add_argument(
        "--chunk-ms",
        type=float,
        default=50.0,
        help="terminal display smoothing interval in ms (0 = print every delta)",
    )
    parser.add_argument(
        "--stats", action="store_true", help="print statistics to stderr at the end"
    )
    return parser


async def check_target(flag: str, path: str) -> None:
    """:func:`sinks.files.check_writable`, its failure as a :class:`pipeline.ConfigError`
    naming ``flag``."""
    try:
        await trio.to_thread.run_sync(check_writable, path)
    except OSError as exc:
        where = exc.filename if exc.filename and exc.filename != path else None
        why = exc.strerror or str(exc)
        raise ConfigError(f"{flag} {path}: {f'{where}: ' if where else ''}{why}") from None


def _say_partial(sink: TextFileSink, io: IO) -> None:
    """The answer did not complete (interrupted, failed): say where its text went."""
    partial = sink.path.with_name(sink.path.name + ".partial")
    if sink.keep_partial and partial.exists():
        print(
            f"llmpipe: the answer did not complete; its first {sink.written_chars} characters "
            f"are in {partial}",
            file=io.err,
            flush=True,
        )


def _summary(stats: PipelineStatistics) -> str:
    duration = (stats.ended_at or stats.started_at) - stats.started_at
    ttft = "-" if stats.time_to_first_text is None else f"{stats.time_to_first_text:.3f} s"
    return (
        f"[{stats.reason}: {stats.events_out} events, {stats.text_chars_out} chars in "
        f"{duration:.2f} s; first text after {ttft}; producer blocked "
        f"{stats.producer_blocked_seconds:.3f} s]"
    )


async def run(args: argparse.Namespace, io: IO) -> int:
    stages: list[Stage] = []
    if args.chunk_ms > 0:
        stages.append(AdaptiveChunker(min_chars=1, interval=args.chunk_ms / 1000))
    routes: list[Route] = [Route(TerminalSink(), policy="coalesce")]
    text_file = None
    for flag, path in (("--out", args.out), ("--events", args.events)):
        if path:  # before the request: nothing is generated (and paid for) to be lost
            await check_target(flag, path)
    if args.out:
        text_file = TextFileSink(args.out)
        routes.append(Route(text_file, policy="coalesce"))
    if args.events:
        routes.append(Route(EventLogSink(args.events), policy="spill"))
    try:
        async with backend_from_args(args) as backend:
            producer = backend.producer(messages_from_args(args))
            stats = await Pipeline(producer, stages=stages, sinks=routes).run()
    finally:
        if text_file is not None and not text_file.completed:
            _say_partial(text_file, io)
    if args.stats:
        print(_summary(stats), file=io.err)
    return 0 if stats.reason in ("done", "consumer_gone") else 1
