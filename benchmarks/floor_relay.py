"""The floor: the least work a relay on trio + hypercorn can do per token (a yardstick, not a
product). It shows how many streams the serving stack itself carries on one core, before any
parsing, events, buffering or telemetry.

A raw ASGI app on hypercorn's trio worker (the server llmpipe runs on). Per request it opens
the upstream and sends the request itself, then per upstream read: a regular expression finds
the benchmark's token stamps (``w<i>:<µs>``) in the raw bytes (no HTTP chunk parsing, no SSE
decoding, no JSON), and one SSE frame per token goes out with one ASGI ``send`` per read.
``--upstream-client raw`` reads the upstream on a bare trio socket; ``httpx`` reads it with an
``httpx.AsyncClient`` stream (``aiter_raw``), which is what the SDKs use underneath.

    python benchmarks/floor_relay.py --base-url http://127.0.0.1:PORT/v1 --port 8002

Used by ``benchmarks/bench_capacity.py`` (servers ``floor`` and ``floor-httpx``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import re
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from sinks.server import GC_THRESHOLD

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

STAMP = re.compile(rb"w\d+:\d+")
REQUEST = json.dumps(
    {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
).encode()
HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
DONE = b'event: done\ndata: {"type":"done"}\n\n'


def frames(data: bytes) -> bytes:
    out = b"".join(b'data: {"type":"text","text":"%s"}\n\n' % t for t in STAMP.findall(data))
    return out + DONE if b"[DONE]" in data else out


class Floor:
    def __init__(self, base_url: str, upstream_client: str) -> None:
        url = urlsplit(base_url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 80
        self.path = url.path.rstrip("/") + "/chat/completions"
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.raw = upstream_client == "raw"
        self.client = httpx.AsyncClient(
            timeout=None, limits=httpx.Limits(max_connections=None, max_keepalive_connections=None)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        if self.raw:
            await self._raw(send)
        else:
            await self._httpx(send)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _raw(self, send: Send) -> None:
        stream = await trio.open_tcp_stream(self.host, self.port)
        async with stream:
            await stream.send_all(
                b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s"
                % (self.path.encode(), self.host.encode(), len(REQUEST), REQUEST)
            )
            while data := await stream.receive_some(65536):
                if out := frames(data):
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                if b"[DONE]" in data:
                    return

    async def _httpx(self, send: Send) -> None:
        headers = {"content-type": "application/json"}
        async with self.client.stream("POST", self.url, content=REQUEST, headers=headers) as r:
            async for data in r.aiter_raw():
                if out := frames(data):
                    await send({"type": "http.response.body", "body": out, "more_body": True})


async def main(args: argparse.Namespace) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.accesslog = None
    app = Floor(args.base_url, args.upstream_client)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)
        # The collector set up as `llmpipe serve` sets it (sinks.server.serve with
        # freeze_heap=True, gc_threshold=GC_THRESHOLD).
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLD)
        print(f"floor serving on {binds[0]}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base-url", required=True, help="the upstream's /v1 URL")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream-client", choices=["raw", "httpx"], default="raw")
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main, parser.parse_args())
