"""llmpipe's own CPU per token on a live HTTP stream, without the network.

The path of ``POST /v1/stream`` from upstream bytes to ASGI messages, in one process: recorded
OpenAI Chat Completions SSE chunks (one token each, as a provider sends them) -> the SDK
producer's loop (``SSEProducer``: SSE decoder, chat parser) -> the runner (no stages: the
producer's task stamps and fans out) -> the live channel (policy ``coalesce``) -> the app's
``pump`` (framing, telemetry; while the client keeps up, as here, the producer's task frames
and writes each event itself) -> ``StreamWriter`` -> an ASGI ``send`` that only yields. What
the network, httpx and hypercorn add on top is in ``CAPACITY.md`` (``bench_capacity.py``).

    .venv/bin/python benchmarks/bench_stream_path.py              # 50,000 tokens, 5 runs
    .venv/bin/python benchmarks/bench_stream_path.py --quick      # smoke (the tests run it)
    .venv/bin/python benchmarks/bench_stream_path.py --cpu        # CPU time, not wall time
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _benchlib import Summary, add_harness_arguments, versions
from bench_capacity import sse_event

from pipeline import Pipeline, Policy
from pipeline.producers._base import SSEProducer, StreamParser
from pipeline.producers._openai import _ChatParser
from sinks.server import ServerConfig, create_app, get_runtime
from sinks.server._app import pump
from sinks.server._context import StreamRequest
from sinks.server._stream import StreamWriter, begin_stream


class RecordedProducer(SSEProducer):
    """The OpenAI chat producer's loop over recorded chunks; a scheduling point per chunk,
    as a network read would be."""

    provider = "openai"

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__()
        self.chunks = chunks
        self.parser: _ChatParser | None = None

    def _parser(self) -> StreamParser:
        self.parser = _ChatParser(())
        return self.parser

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[AsyncIterator[bytes]]:
        async def chunks() -> AsyncIterator[bytes]:
            for chunk in self.chunks:
                await trio.lowlevel.checkpoint()
                yield chunk

        yield chunks()


async def one_run(tokens: int, clock: Callable[[], float]) -> tuple[float, int]:
    chunks = [sse_event({"role": "assistant", "content": ""})]
    chunks += [sse_event({"content": f" w{i}:1234567890123"}) for i in range(tokens)]
    chunks += [sse_event({}, "stop"), b"data: [DONE]\n\n"]
    app = create_app(lambda request: None, ServerConfig())  # type: ignore[arg-type,return-value]
    runtime = get_runtime(app)
    sends = 0

    async def send(message: Any) -> None:
        nonlocal sends
        sends += 1
        await trio.lowlevel.checkpoint()

    writer = StreamWriter(send, "sse")
    record = begin_stream(runtime, "live", "/v1/stream", StreamRequest(messages=()))
    t = clock()
    async with Pipeline(RecordedProducer(chunks)).events(policy=Policy.COALESCE) as events:
        await pump(runtime, events, writer, record)
    elapsed = clock() - t
    if record.text_chars != sum(len(f" w{i}:1234567890123") for i in range(tokens)):
        raise SystemExit("text lost")
    return elapsed / tokens * 1e6, sends


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="time with the process's CPU time (steadier than wall time on a shared machine)",
    )
    add_harness_arguments(parser, "nothing (the harness keeps the summary); quick: 2,000 tokens")
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.runs = 2_000, 1
    clock = time.process_time if args.cpu else time.perf_counter
    results = [trio.run(one_run, args.tokens, clock) for _ in range(args.runs)]
    per_token = [r[0] for r in results]
    print(
        f"{args.tokens} tokens x {args.runs} runs: median {statistics.median(per_token):.1f} "
        f"µs/token (min {min(per_token):.1f}), {results[-1][1]} ASGI sends in the last run"
    )
    Summary(
        name="stream-path",
        title="Live stream path",
        claim=(
            f"llmpipe's own {'CPU' if args.cpu else 'wall'} time per token from recorded OpenAI "
            "SSE chunks to ASGI messages "
            "(SSE decoder, chat parser, runner, coalescing channel, framing), without the "
            "network: the part of `Streams per core` that is llmpipe's own. No baseline here: "
            "the guide relay's full cost per token is in `Streams per core`."
        ),
        columns=[">tokens", ">runs", ">median µs/token", ">min µs/token", ">ASGI sends"],
        rows=[
            [
                f"{args.tokens:,}",
                str(args.runs),
                f"{statistics.median(per_token):.1f}",
                f"{min(per_token):.1f}",
                f"{results[-1][1]:,}",
            ]
        ],
        versions=versions("trio", "openai"),
        quick=args.quick,
    ).save(args.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
