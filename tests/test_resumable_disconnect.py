"""Resumable generations whose readers leave: ``on_disconnect`` ("continue" or "cancel"),
``DELETE`` on a resumed stream, and the real ``partial_chars`` of a cancelled generation.
On a real hypercorn server, in memory and on a private redis-server. Real time, bounded waits.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
from http_kit import eventually, factory_of, running

from pipeline.testing import CountingProducer
from pipeline.wire import SSEDecoder, SSEEvent
from sinks.server import ServerConfig, create_app

BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}]}


async def read_events(
    client: httpx.AsyncClient, url: str, after: str | None = None, count: int | None = None
) -> list[SSEEvent]:
    """The stream's SSE events after ``after``: ``count`` of them (then disconnect), or all."""
    headers = {"Last-Event-ID": after} if after is not None else {}
    decoder, events = SSEDecoder(), []
    async with client.stream("GET", url, headers=headers) as r:
        async for chunk in r.aiter_raw():
            events.extend(decoder.feed(chunk))
            if count is not None and len(events) >= count:
                return events[:count]
    return events


def text_of(events: list[SSEEvent]) -> str:
    return "".join(json.loads(e.data).get("text", "") for e in events if e.event == "text")


async def test_delete_on_a_resumed_stream_and_partial_chars(store_url: str | None) -> None:
    """Read, leave, resume from Last-Event-ID, DELETE while following the resumed stream: the
    resumed reader gets the ``cancelled`` end, whose ``partial_chars`` is the number of
    characters the stream delivered (was 0), and the whole partial output stays readable."""
    producer = CountingProducer(text="ab", delay=0.01)
    app = create_app(factory_of(lambda r: producer), ServerConfig(store_url=store_url))
    async with running(app) as url, httpx.AsyncClient() as client:
        created = (await client.post(url + "/v1/streams", json=BODY)).json()
        events_url = url + created["events_url"]
        first = await read_events(client, events_url, count=5)
        resumed: list[SSEEvent] = []
        async with trio.open_nursery() as nursery:

            async def follow() -> None:
                resumed.extend(await read_events(client, events_url, after=first[-1].id))

            nursery.start_soon(follow)
            await eventually(lambda: producer.emitted >= 20, within=5)
            resp = await client.delete(url + f"/v1/streams/{created['id']}")
            assert resp.status_code == 202
        await eventually(lambda: producer.closed_at is not None, within=5)
        assert producer.cancelled
        end = json.loads(resumed[-1].data)
        assert (resumed[-1].event, end["kind"]) == ("error", "cancelled")
        text = text_of(first + resumed)
        assert text == "ab" * (len(text) // 2)
        assert end["partial_chars"] == len(text) >= 40
        assert [int(e.id) for e in first + resumed] == list(range(1, len(first + resumed) + 1))
        whole = await read_events(client, events_url)
        assert text_of(whole) == text
        assert json.loads(whole[-1].data) == end


async def test_on_disconnect_cancel(store_url: str | None) -> None:
    """``on_disconnect: "cancel"``: once its reader leaves, the generation is cancelled (within
    two touch intervals of a second), not after the idle bound (60 s here)."""
    producer = CountingProducer(text="c", delay=0.01)
    app = create_app(factory_of(lambda r: producer), ServerConfig(store_url=store_url))
    async with running(app) as url, httpx.AsyncClient() as client:
        created = (
            await client.post(url + "/v1/streams", json={**BODY, "on_disconnect": "cancel"})
        ).json()
        events_url = url + created["events_url"]
        await read_events(client, events_url, count=3)
        left_at = trio.current_time()
        await eventually(lambda: producer.closed_at is not None, within=10)
        assert producer.cancelled
        assert producer.closed_at is not None
        assert producer.closed_at - left_at < 5
        events = await read_events(client, events_url)
        end = json.loads(events[-1].data)
        assert end["kind"] == "cancelled"
        assert end["message"] == "the generation was cancelled (disconnected)"
        assert end["partial_chars"] == len(text_of(events))


async def test_on_disconnect_continue() -> None:
    """``on_disconnect: "continue"``: the reader leaves, the generation goes on to its end into
    the store, and a later resume gets the rest exactly once."""
    producer = CountingProducer(text="d", delay=0.005, count=300)
    app = create_app(factory_of(lambda r: producer), ServerConfig(idle_cancel_after=30))
    async with running(app) as url, httpx.AsyncClient() as client:
        created = (
            await client.post(url + "/v1/streams", json={**BODY, "on_disconnect": "continue"})
        ).json()
        events_url = url + created["events_url"]
        first = await read_events(client, events_url, count=3)
        await eventually(lambda: producer.closed_at is not None, within=10)
        assert not producer.cancelled
        rest = await read_events(client, events_url, after=first[-1].id)
        assert text_of(first + rest) == "d" * 300
        assert rest[-1].event == "done"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("/v1/stream", "cancel", "only for resumable generations (POST /v1/streams)"),
        ("/v1/streams", "stop", "one of ['cancel', 'continue']"),
    ],
)
async def test_on_disconnect_is_checked(path: str, value: str, message: str) -> None:
    app = create_app(factory_of(lambda r: CountingProducer(count=1)))
    async with running(app) as url, httpx.AsyncClient() as client:
        resp = await client.post(url + path, json={**BODY, "on_disconnect": value})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["field"] == "on_disconnect"
    assert message in error["message"]
