"""``llmpipe emulate``: a fake provider (OpenAI and Anthropic streaming formats) with faults."""

from __future__ import annotations

import argparse
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from pipeline import ConfigError
from pipeline.testing.emulator import (
    DEFAULT_REPLY,
    Emulator,
    RateLimits,
    Reply,
    parse_fault,
    serve_emulator,
)

if TYPE_CHECKING:
    from ._main import IO

__all__ = ["NAME", "add_parser", "run"]

NAME = "emulate"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        NAME,
        help="serve OpenAI/Anthropic-compatible streaming endpoints with a scripted reply",
        description="Serve OpenAI/Anthropic-compatible streaming endpoints with a scripted "
        "reply, until interrupted (Ctrl-C).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--text", default=DEFAULT_REPLY.text, help="the reply text")
    parser.add_argument("--tokens-per-second", type=float, default=20.0, help="0: no pacing")
    parser.add_argument("--input-tokens", type=int, default=10)
    parser.add_argument("--fault", default="none", help="e.g. reset_after:3, status:429:1:2")
    parser.add_argument("--rpm", type=int, help="requests per minute before answering 429")
    parser.add_argument("--tpm", type=int, help="tokens per minute before answering 429")
    parser.add_argument(
        "--window", type=float, default=60.0, help="seconds the --rpm/--tpm limits span"
    )
    parser.add_argument("--log", metavar="FILE", help="append one JSON line per request to FILE")
    parser.add_argument(
        "--batch-delay",
        type=float,
        default=0.0,
        help="seconds a batch (POST /v1/batches) stays in_progress (default 0)",
    )
    return parser


async def run(args: argparse.Namespace, io: IO) -> int:
    try:
        fault = parse_fault(args.fault)
    except ValueError as exc:
        raise ConfigError(f"--fault: {exc}") from None
    reply = Reply(
        args.text,
        input_tokens=args.input_tokens,
        tokens_per_second=args.tokens_per_second,
        fault=fault,
    )
    limits = None
    if args.rpm is not None or args.tpm is not None:
        if args.window <= 0 or any(v is not None and v < 1 for v in (args.rpm, args.tpm)):
            raise ConfigError("--rpm and --tpm must be >= 1 and --window > 0")
        limits = RateLimits(args.rpm, args.tpm, args.window)
    async with trio.open_nursery() as nursery:
        emulator: Emulator = await nursery.start(
            partial(
                serve_emulator,
                args.host,
                args.port,
                reply,
                limits=limits,
                log=args.log,
                batch_delay=args.batch_delay,
            )
        )
        print(
            f"llmpipe emulator listening on {emulator.base_url}\n"
            f"  OpenAI:    base_url={emulator.openai_base_url}\n"
            f"  Anthropic: base_url={emulator.anthropic_base_url}\n"
            f"  Speech:    POST {emulator.openai_base_url}/audio/speech (pcm, a tone)\n"
            f"  Batch API: {emulator.openai_base_url}/files, {emulator.openai_base_url}/batches",
            file=io.err,
            flush=True,
        )
    return 0
