"""One task per stream while the client keeps up: the producer's task writes each event to the
ASGI ``send`` itself (``StreamWriter.take``); once a write is slow, the stream's channel and
its policy take over again (``coalesce``, ``spill``, ``fail``), in order and losslessly.

The scripted tests call the ASGI app directly under trio's MockClock, with a client whose
``send`` freezes (shielded, as hypercorn's socket writes are) at chosen writes and which records
the task that made each write; one test runs on hypercorn with a real client.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
from http_kit import factory_of, running

from pipeline import EventReceiver
from pipeline.testing import CountingProducer
from pipeline.wire import SSEDecoder, SSEEvent
from sinks.server import ServerConfig, create_app, get_runtime

BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}]}
PRODUCER_TASK = "llmpipe producer"


class ScriptedClient:
    """An ASGI client of ``POST /v1/stream``: its ``send`` records the body and which task
    wrote each part, and stays frozen for ``freeze`` seconds at the body writes numbered in
    ``freeze_at`` (1-based), shielded like hypercorn's socket writes."""

    def __init__(self, body: dict[str, Any], freeze_at: set[int], freeze: float = 0.5) -> None:
        self.request = json.dumps(body).encode()
        self.freeze_at = freeze_at
        self.freeze = freeze
        self.writers: list[str] = []  # the task that made each body write
        self.raw = bytearray()
        self.channels: list[EventReceiver] = []  # the live channel, seen from inside a write
        self.live: Any = None
        self._asked = False
        self._ended = trio.Event()

    async def receive(self) -> dict[str, Any]:
        if not self._asked:
            self._asked = True
            return {"type": "http.request", "body": self.request, "more_body": False}
        await self._ended.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] != "http.response.body":
            return
        if not self.channels and self.live is not None:
            self.channels.extend(self.live.channels)
        self.writers.append(trio.lowlevel.current_task().name)
        if len(self.writers) in self.freeze_at:
            with trio.CancelScope(shield=True):
                await trio.sleep(self.freeze)
        await trio.lowlevel.checkpoint()
        self.raw += message["body"]
        if not message.get("more_body", False):
            self._ended.set()

    def events(self) -> list[SSEEvent]:
        return [e for e in SSEDecoder().feed(bytes(self.raw)) if e.event != "heartbeat"]


async def serve_scripted(producer: CountingProducer, client: ScriptedClient) -> Any:
    """Run one ``POST /v1/stream`` of the app against ``client``; returns the app's runtime."""
    app = create_app(factory_of(lambda r: producer), ServerConfig())
    runtime = get_runtime(app)
    client.live = runtime.metrics.live
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/stream",
        "raw_path": b"/v1/stream",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"accept", b"text/event-stream")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, client.receive, client.send)
    return runtime


def metric(runtime: Any, name: str) -> float:
    text = runtime.metrics.render().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def text_of(events: list[SSEEvent]) -> str:
    return "".join(json.loads(e.data)["text"] for e in events if e.event == "text")


async def test_a_client_that_keeps_up_is_written_by_the_producer_task(
    autojump_clock: trio.abc.Clock,
) -> None:
    producer = CountingProducer(count=200, text="ab", delay=0.01)
    client = ScriptedClient(BODY, freeze_at=set())
    runtime = await serve_scripted(producer, client)
    events = client.events()
    assert [int(e.id) for e in events] == list(range(1, 202))  # every delta, then done
    assert text_of(events) == "ab" * 200
    assert events[-1].event == "done"
    # Each event was written by the producer's task, one write each; the last one (done) ended
    # the response.
    assert client.writers == [PRODUCER_TASK] * 201
    assert metric(runtime, "llmpipe_events_written_directly_total") == 201
    assert metric(runtime, "llmpipe_deltas_coalesced_total") == 0


class ClosesOnDone(ScriptedClient):
    """A client that closes the connection as soon as it has read the ``done`` event, as a
    browser's ``EventSource`` handler does (``source.close()``), whether or not the response's
    end came with it."""

    def __init__(self, body: dict[str, Any], freeze_at: set[int]) -> None:
        super().__init__(body, freeze_at)
        self._done_read = trio.Event()

    async def receive(self) -> dict[str, Any]:
        if not self._asked:
            return await super().receive()
        await self._done_read.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        await super().send(message)
        if b"event: done" in self.raw:
            self._done_read.set()


async def test_the_terminal_event_ends_the_response(autojump_clock: trio.abc.Clock) -> None:
    """The ``done`` event goes out in the response's last message (``more_body`` false), so a
    client that closes on it has read a whole response: the stream ends ``done``, not as a
    client that went away, and no end message follows."""
    producer = CountingProducer(count=20, text="ab", delay=0.01)
    client = ClosesOnDone(BODY, freeze_at=set())
    runtime = await serve_scripted(producer, client)
    events = client.events()
    assert [e.event for e in events] == ["text"] * 20 + ["done"]
    assert client._ended.is_set()  # a body message with more_body false came
    assert client.writers == [PRODUCER_TASK] * 21  # the last one was the done event's
    assert metric(runtime, "llmpipe_client_disconnects_total") == 0
    assert metric(runtime, "llmpipe_expected_ends_total") == 0


async def test_the_last_write_waits_for_a_slow_heartbeat_and_still_goes_out(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The response's last write (the done event) may have to wait for another write to the
    same client: here the heartbeat at t=35 s takes 8 s while the last text and done arrive at
    t=40. It waits as long as that write takes (a client that stopped reading is the send
    deadline's business), and the response still ends with the done event."""
    producer = CountingProducer(count=2, text="ab", delay=20)
    # Writes: 1 headers + heartbeat (t=15), 2 the first text (t=20), 3 a heartbeat (t=35).
    client = ScriptedClient(BODY, freeze_at={3}, freeze=8.0)
    runtime = await serve_scripted(producer, client)
    events = client.events()
    assert [e.event for e in events] == ["text", "text", "done"]
    assert client._ended.is_set()
    assert metric(runtime, "llmpipe_client_disconnects_total") == 0


@pytest.mark.parametrize("policy", ["coalesce", "spill", "fail"])
async def test_a_client_that_freezes_mid_stream_gets_the_policy(
    autojump_clock: trio.abc.Clock, policy: str
) -> None:
    """Write 20 (the producer's own) freezes: the producer waits in it. It is slow, so the next
    event goes through the channel and the pump writes it (write 21), which freezes too: the
    producer goes on meanwhile, into the channel under the policy. Once the pump's writes are
    quick again, the producer writes directly again."""
    producer = CountingProducer(count=200, text="t" * 100, delay=0.01)
    max_bytes = 64 * 1024 if policy == "coalesce" else 1000
    body = {**BODY, "buffering": {"policy": policy, "max_bytes": max_bytes}}
    client = ScriptedClient(body, freeze_at={20, 21})
    runtime = await serve_scripted(producer, client)
    events = client.events()
    assert client.writers[:20] == [PRODUCER_TASK] * 20
    assert client.writers[20] != PRODUCER_TASK  # the pump, while the producer goes on
    (channel,) = client.channels
    stats = channel.statistics()
    ids = [int(e.id) for e in events if e.event in ("text", "done")]
    assert ids == sorted(set(ids))  # in order, nothing twice
    if policy == "fail":
        # What was queued, then the overflow error; the stream ends there.
        assert events[-1].event == "error"
        assert json.loads(events[-1].data)["kind"] == "overflow"
        assert text_of(events) == "t" * 100 * len([e for e in events if e.event == "text"])
        assert metric(runtime, 'llmpipe_errors_total{kind="overflow"}') == 1
        return
    assert events[-1].event == "done"
    assert ids[-1] == 201
    assert text_of(events) == "t" * 100 * 200  # nothing lost
    assert len(events) < 201  # the lag was absorbed in fewer, larger deltas
    if policy == "coalesce":
        assert stats.items_coalesced > 0
    else:
        assert stats.items_spilled > 0
    assert PRODUCER_TASK in client.writers[22:]  # caught up: direct again
    assert 0 < stats.items_direct < 201


async def test_a_reading_client_on_hypercorn_gets_every_event_in_order() -> None:
    """On the real server, with a client that reads as it comes: every event in order, and the
    producer's task wrote them (``llmpipe_events_written_directly``)."""
    producer = CountingProducer(count=300, text="cd", delay=0.001)
    app = create_app(factory_of(lambda r: producer), ServerConfig())
    async with running(app) as url, httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", url + "/v1/stream", json=BODY) as resp:
            decoder = SSEDecoder()
            events = [e async for chunk in resp.aiter_raw() for e in decoder.feed(chunk)]
        text = (await client.get(url + "/metrics")).text
    events = [e for e in events if e.event != "heartbeat"]
    assert [int(e.id) for e in events] == list(range(1, 302))
    assert text_of(events) == "cd" * 300
    direct = sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("llmpipe_events_written_directly_total")
    )
    assert direct > 0
