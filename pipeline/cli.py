"""The ``llmpipe`` command line.

This is the one module that wires ``pipeline`` to ``sinks``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

from . import AdaptiveChunker, Pipeline, Route, Stage
from ._errors import LLMPipeError
from .producers import ScriptedProducer

__all__ = ["main"]

DEMO_TEXT = (
    "llmpipe streams a model's answer to the consumers that read it. Every buffer between the "
    "producer and a sink is bounded, in items and in bytes. When a consumer lags, its own "
    "policy decides: block, coalesce, spill, drop the oldest, or fail. Nothing is lost unless "
    "a policy says so, and cancelling the pipeline closes the upstream request at once."
)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmpipe", description="Stream LLM output to the consumers that read it."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    stream = sub.add_parser("stream", help="stream an answer to the terminal (and files)")
    stream.add_argument("prompt", nargs="?", default="", help="the prompt")
    stream.add_argument(
        "--scripted",
        metavar="TEXT",
        nargs="?",
        const=DEMO_TEXT,
        help="play TEXT (default: a demo text) as a scripted model, word by word",
    )
    stream.add_argument(
        "--rate",
        type=float,
        default=40.0,
        help="scripted tokens per second (0 = as fast as possible; default 40)",
    )
    stream.add_argument("--out", metavar="FILE", help="also write the text to FILE (atomically)")
    stream.add_argument("--events", metavar="FILE", help="also write every event to FILE (JSONL)")
    stream.add_argument(
        "--chunk-ms",
        type=float,
        default=50.0,
        help="terminal display smoothing interval in ms (0 = print every delta)",
    )
    stream.add_argument(
        "--stats", action="store_true", help="print statistics to stderr at the end"
    )
    return parser


def _producer(args: argparse.Namespace) -> ScriptedProducer:
    rate: float = args.rate
    if rate < 0:
        raise SystemExit("llmpipe: --rate must be >= 0")
    text = args.scripted if args.scripted is not None else DEMO_TEXT
    return ScriptedProducer.from_text(text, delay=1.0 / rate if rate else 0.0)


async def _stream(args: argparse.Namespace) -> int:
    from sinks import EventLogSink, TerminalSink, TextFileSink

    stages: list[Stage] = []
    if args.chunk_ms > 0:
        stages.append(AdaptiveChunker(min_chars=1, interval=args.chunk_ms / 1000))
    routes: list[Route] = [Route(TerminalSink(), policy="coalesce")]
    if args.out:
        routes.append(Route(TextFileSink(args.out), policy="coalesce"))
    if args.events:
        routes.append(Route(EventLogSink(args.events), policy="spill"))
    pipeline = Pipeline(_producer(args), stages=stages, sinks=routes)
    stats = await pipeline.run()
    if args.stats:
        print(stats, file=sys.stderr)
    return 0 if stats.reason in ("done", "consumer_gone") else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmpipe`` console script."""
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "stream":
            return trio.run(_stream, args)
    except LLMPipeError as exc:
        print(f"llmpipe: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    raise AssertionError(args.command)  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
