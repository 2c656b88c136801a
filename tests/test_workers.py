"""``llmpipe serve --workers 2 --store redis://``: two processes on one port; connections land on
both (``/health`` says which pid answered), and a stream started on one is resumed and cancelled
through the other."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from pipeline.wire import SSEDecoder, SSEEvent

ROOT = Path(__file__).resolve().parent.parent
TEXT = " ".join(f"w{i}" for i in range(400))


async def pid_of(client: httpx.AsyncClient, url: str) -> int:
    pid: int = (await client.get(url + "/health")).json()["pid"]
    return pid


async def read_events(
    client: httpx.AsyncClient,
    url: str,
    after: str | None = None,
    stop: int = 0,
    events: list[SSEEvent] | None = None,
) -> list[SSEEvent]:
    """The events (appended to ``events`` as they come), all or the first ``stop``."""
    headers = {"Last-Event-ID": after} if after else {}
    decoder = SSEDecoder()
    events = [] if events is None else events
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_bytes():
            events += decoder.feed(chunk)
            if stop and len(events) >= stop:
                return events[:stop]
    return events


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_two_workers_share_a_port_and_the_streams(redis_url: str) -> None:
    proc = subprocess.Popen(  # noqa: ASYNC220 (the server under test, for the test's length)
        [
            sys.executable, "-m", "sinks.cli", "serve", "--port", "0", "--workers", "2",
            "--store", redis_url, "--scripted", TEXT, "--rate", "20", "--shutdown-grace", "2",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        with trio.fail_after(60):
            while "workers" not in (line := await trio.to_thread.run_sync(proc.stderr.readline)):
                assert line, "the server exited"
        url = line.split(" on ", 1)[1].split("/ ", 1)[0]
        workers = {int(p) for p in line.rsplit("(pids ", 1)[1].rstrip(")\n").split()}
        assert len(workers) == 2
        # One connection = one worker: keep-alive clients pinned to each, two per worker.
        pinned: dict[int, list[httpx.AsyncClient]] = {pid: [] for pid in workers}
        for _ in range(200):
            client = httpx.AsyncClient(limits=httpx.Limits(max_connections=1), timeout=30)
            clients = pinned[await pid_of(client, url)]
            if len(clients) < 2:
                clients.append(client)
            else:
                await client.aclose()
            if all(len(c) == 2 for c in pinned.values()):
                break
        assert all(len(c) == 2 for c in pinned.values())  # connections landed on both
        (_, (a, _)), (pid_b, (b, b2)) = pinned.items()
        try:
            created = (await a.post(url + "/v1/streams", json={"prompt": "hi"})).json()
            events_url = url + created["events_url"]
            first = await read_events(a, events_url, stop=10)  # the generation runs on pid_a
            # Resume on the other worker from the last id seen, and cancel from there too.
            assert await pid_of(b, url) == pid_b
            assert await pid_of(b2, url) == pid_b
            rest: list[SSEEvent] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(read_events, b, events_url, after=first[-1].id, events=rest)
                )
                while len(rest) < 1:  # noqa: ASYNC110 (the resumed reader is running)
                    await trio.sleep(0.05)
                resp = await b2.delete(url + f"/v1/streams/{created['id']}")
                assert resp.status_code == 202
            seqs = [int(e.id) for e in first + rest]
            assert seqs == list(range(1, len(seqs) + 1))
            end = json.loads(rest[-1].data)
            assert (rest[-1].event, end["kind"]) == ("error", "cancelled")
            text = "".join(json.loads(e.data).get("text", "") for e in first + rest)
            assert TEXT.startswith(text)
            assert len(text) < len(TEXT)  # cancelled before its end
            assert end["partial_chars"] == len(text)
        finally:
            for clients in pinned.values():
                for client in clients:
                    await client.aclose()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(proc.wait, 30) == 0
        proc.stderr.close()
