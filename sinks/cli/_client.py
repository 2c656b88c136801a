"""``llmpipe client URL``: follow a stream of an llmpipe server, resuming with Last-Event-ID."""

from __future__ import annotations

import argparse
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from pipeline import Error, TextDelta, event_to_json, is_terminal
from pipeline.client import open_event_stream, stream_events

from ._env import AUTH_TOKEN_ENV, auth_token_from_env

if TYPE_CHECKING:
    from ._main import IO

__all__ = ["NAME", "add_parser", "run"]

NAME = "client"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        NAME,
        help="follow a stream of an llmpipe server (resumes with Last-Event-ID)",
        description="Follow an llmpipe event stream, reconnecting and resuming as needed. "
        "Prints text deltas as they arrive (or, with --json, every event as a JSON line). "
        "Exits 0 when the stream ended with done, 1 when it ended with an error event. "
        f"Sends the bearer token in ${AUTH_TOKEN_ENV}, if set.",
    )
    parser.add_argument(
        "url",
        help="the stream's events URL (.../v1/streams/<id>/events), or with --prompt the "
        "server's base URL",
    )
    parser.add_argument("--prompt", help="start a new resumable stream with this user prompt")
    parser.add_argument(
        "--last-event-id", type=int, metavar="N", help="resume after event N (its seq)"
    )
    parser.add_argument("--json", action="store_true", help="print every event as one JSON line")
    parser.add_argument(
        "--max-reconnects", type=int, default=10, help="consecutive fruitless reconnects (10)"
    )
    return parser


async def run(args: argparse.Namespace, io: IO) -> int:
    out, err = io.out, io.err
    options: dict[str, Any] = {"max_reconnects": args.max_reconnects}
    token = auth_token_from_env()
    if token is not None:
        options["headers"] = {"Authorization": f"Bearer {token}"}
    async with AsyncExitStack() as stack:
        if args.prompt is not None:
            body = {"messages": [{"role": "user", "content": args.prompt}]}
            events = await stack.enter_async_context(stream_events(args.url, body, **options))
        else:
            events = await stack.enter_async_context(
                open_event_stream(args.url, last_event_id=args.last_event_id, **options)
            )
        status = 1  # ended without a terminal event (HTTP 204)
        async for event in events:
            if args.json:
                out.write(event_to_json(event) + "\n")
            elif isinstance(event, TextDelta):
                out.write(event.text)
            out.flush()
            if isinstance(event, Error):
                if not args.json:
                    out.write("\n")
                    print(f"llmpipe: stream failed ({event.kind}): {event.message}", file=err)
                status = 1
            elif is_terminal(event):
                if not args.json:
                    out.write("\n")
                status = 0
        out.flush()
        return status
