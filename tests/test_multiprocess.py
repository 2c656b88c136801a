"""Two real `llmpipe serve` processes sharing one Redis: resume on the other process, cancel from
the other process, and a graceful exit on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from pipeline.wire import SSEDecoder, SSEEvent

ROOT = Path(__file__).resolve().parent.parent
WORDS = [f"w{i}" for i in range(120)]
TEXT = " ".join(WORDS)


def start_server(redis_url: str, rate: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "sinks.cli", "serve", "--port", "0", "--store", redis_url,
            "--scripted", TEXT, "--rate", str(rate), "--shutdown-grace", "2",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "serving" in line, line + (proc.stderr.read() if proc.poll() is not None else "")
    url = line.split(" on ", 1)[1].split("/ ", 1)[0]
    return proc, url


@pytest.fixture
def two_servers(redis_url: str) -> Iterator[tuple[str, str]]:
    a, url_a = start_server(redis_url, rate=40)
    b, url_b = start_server(redis_url, rate=40)
    try:
        yield url_a, url_b
    finally:
        for proc in (a, b):
            proc.send_signal(signal.SIGTERM)
        for proc in (a, b):
            # Graceful shutdown is bounded (--shutdown-grace 2).
            assert proc.wait(timeout=15) == 0
            assert proc.stderr is not None
            proc.stderr.close()


async def read_events(
    client: httpx.AsyncClient, url: str, *, headers: dict[str, str] | None = None, stop: int = 0
) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        async for chunk in response.aiter_bytes():
            events += decoder.feed(chunk)
            if stop and len(events) >= stop:
                return events[:stop]
            if events and events[-1].event in ("done", "error"):
                return events
    return events


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_resume_on_another_process_exactly_once(two_servers: tuple[str, str]) -> None:
    url_a, url_b = two_servers
    async with httpx.AsyncClient(timeout=30) as client:
        created = (await client.post(url_a + "/v1/streams", json={"prompt": "hi"})).json()
        path = created["events_url"]
        first = await read_events(client, url_a + path, stop=15)  # then the client drops
        last = first[-1].id
        rest = await read_events(client, url_b + path, headers={"Last-Event-ID": last})
    seqs = [int(e.id) for e in first + rest]
    assert seqs == list(range(1, len(seqs) + 1))  # nothing lost, nothing repeated
    text = "".join(json.loads(e.data).get("text", "") for e in first + rest)
    assert text == TEXT
    assert rest[-1].event == "done"


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_delete_on_another_process_cancels_the_generation(
    two_servers: tuple[str, str],
) -> None:
    url_a, url_b = two_servers
    async with httpx.AsyncClient(timeout=30) as client:
        created = (await client.post(url_a + "/v1/streams", json={"prompt": "hi"})).json()
        path = created["events_url"]
        await read_events(client, url_b + path, stop=5)
        resp = await client.delete(url_b + f"/v1/streams/{created['id']}")
        assert resp.status_code in (202, 204)
        with trio.fail_after(10):
            events = await read_events(client, url_b + path, headers={"Last-Event-ID": "5"})
    assert events[-1].event == "error"
    assert json.loads(events[-1].data)["kind"] == "cancelled"
    text = "".join(json.loads(e.data).get("text", "") for e in events)
    assert len(text) < len(TEXT) - 100  # stopped early: 120 words at 40/s take 3 s
