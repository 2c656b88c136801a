"""Chromium's native ``EventSource`` stops reconnecting to a resumable stream that has ended.

A browser that does not close its ``EventSource`` on ``done`` reconnects when the response ends,
with the ``Last-Event-ID`` of the last event. With nothing after it in a stream that has ended,
the server answers ``204 No Content``, which the HTML standard defines as "fail the connection"
(no more reconnects); an unknown stream keeps its 404, which also stops it. Before, the
reconnect got an empty 200 and the browser retried every 3 s for the stream's retention.

The app runs in-process (hypercorn, loopback) behind a small ASGI wrapper that records each
``GET .../events`` (its ``Last-Event-ID`` and status); ``tests/browser/eventsource_end.mjs``
drives Debian's Chromium through playwright-core.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.producers import ScriptedProducer
from sinks.server import StreamRequest, create_app, serve

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = "/usr/bin/chromium"
TEXT = "Ended, and the browser stops asking."

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


class _Recorder:
    """Records (Last-Event-ID, status) of every events request in ``requests``."""

    def __init__(self, app: ASGIApp, requests: list[tuple[str | None, int]]) -> None:
        self.app = app
        self.requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/events"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        last = headers.get(b"last-event-id")
        entry = [last.decode() if last is not None else None, 0]

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry[1] = message["status"]
                self.requests.append((entry[0], entry[1]))
            await send(message)

        await self.app(scope, receive, recording_send)


@asynccontextmanager
async def _scripted(request: StreamRequest) -> AsyncIterator[ScriptedProducer]:
    yield ScriptedProducer.from_text(TEXT)


def _node() -> str:
    node = shutil.which("node")
    if node is None or not Path(CHROMIUM).exists():
        pytest.fail("node and chromium are needed (tests/setup.sh)", pytrace=False)
    return node


async def _eventsource(node: str, page: str, events: str) -> Any:
    with trio.fail_after(60):
        result = await trio.run_process(
            [node, "eventsource_end.mjs", page, events],
            cwd=BROWSER_DIR,
            capture_stdout=True,
            check=False,
        )
    assert result.returncode == 0, result
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


async def test_native_eventsource_stops_after_done(nursery: trio.Nursery) -> None:
    node = _node()
    requests: list[tuple[str | None, int]] = []
    app = create_app(_scripted)
    app.add_middleware(_Recorder, requests=requests)
    port = await nursery.start(serve, app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base) as client:
        created = (await client.post("/v1/streams", json={"prompt": "hi"})).json()
        with trio.fail_after(5):  # read to the end: the stream has ended after this
            assert "event: done" in (await client.get(created["events_url"])).text
    requests.clear()

    result = await _eventsource(node, f"{base}/health", base + created["events_url"])

    assert "timedOut" not in result, result
    assert result["state"] == 2  # CLOSED: the browser gave up by itself
    texts = [e["data"]["text"] for e in result["seen"] if e["type"] == "text"]
    assert "".join(texts) == TEXT
    assert result["seen"][-1]["type"] == "done"
    last_id = result["seen"][-1]["id"]
    # One full read, then one reconnect from the last event, answered 204; nothing after.
    assert requests == [(None, 200), (last_id, 204)]


async def test_a_reconnect_with_events_left_still_replays_and_unknown_is_404(
    nursery: trio.Nursery,
) -> None:
    app = create_app(_scripted)
    port = await nursery.start(serve, app, "127.0.0.1", 0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        created = (await client.post("/v1/streams", json={"prompt": "hi"})).json()
        url = created["events_url"]
        with trio.fail_after(5):
            full = (await client.get(url)).text
        assert "event: done" in full
        last = int(full.rsplit("id: ", 1)[1].split("\n", 1)[0])
        ended = await client.get(url, headers={"Last-Event-ID": str(last)})
        assert ended.status_code == 204
        assert ended.content == b""
        beyond = await client.get(url, params={"last_event_id": str(last + 5)})
        assert beyond.status_code == 204
        one_left = await client.get(url, headers={"Last-Event-ID": str(last - 1)})
        assert one_left.status_code == 200
        assert "event: done" in one_left.text
        unknown = await client.get("/v1/streams/nope/events", headers={"Last-Event-ID": "3"})
        assert unknown.status_code == 404
