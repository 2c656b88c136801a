"""``serve`` leaves the collector alone unless asked; asked (as ``llmpipe serve`` does), it freezes
the start-up heap (``gc.freeze``) so full collections skip it, and raises the collector's
thresholds."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial

import httpx
import pytest
import trio

from pipeline import Producer
from pipeline.testing import ScriptedProducer
from sinks.server import GC_THRESHOLD, StreamRequest, create_app, serve


@asynccontextmanager
async def factory(request: StreamRequest) -> AsyncIterator[Producer]:
    yield ScriptedProducer.from_text("ok")


@pytest.fixture
def collector() -> Iterator[None]:
    """Start with nothing frozen; afterwards unfreeze and restore the thresholds, so the tests
    that follow see the collector as it was."""
    threshold = gc.get_threshold()
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


async def test_serve_leaves_the_collector_alone_by_default(collector: None) -> None:
    before = gc.get_threshold()
    assert before != GC_THRESHOLD
    app = create_app(factory)
    stop = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(serve, app, "127.0.0.1", 0, shutdown_trigger=stop.wait)
            )
            assert gc.get_freeze_count() == 0
            assert gc.get_threshold() == before
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://127.0.0.1:{port}/health")
            assert response.status_code == 200
            stop.set()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


async def test_serve_freezes_heap_and_sets_thresholds_when_asked(collector: None) -> None:
    assert gc.get_freeze_count() == 0
    app = create_app(factory)
    stop = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(
                    serve,
                    app,
                    "127.0.0.1",
                    0,
                    shutdown_trigger=stop.wait,
                    freeze_heap=True,
                    gc_threshold=GC_THRESHOLD,
                )
            )
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold() == GC_THRESHOLD
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://127.0.0.1:{port}/health")
            assert response.status_code == 200
            stop.set()
