"""``serve`` freezes the start-up heap (``gc.freeze``) so full collections skip it, and raises
the collector's thresholds."""

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
from sinks.server import StreamRequest, create_app, serve
from sinks.server._serve import GC_THRESHOLD


@asynccontextmanager
async def factory(request: StreamRequest) -> AsyncIterator[Producer]:
    yield ScriptedProducer.from_text("ok")


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Start with nothing frozen and leave nothing frozen for the tests that follow."""
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def test_serve_freezes_heap_after_start(unfrozen: None) -> None:
    assert gc.get_freeze_count() == 0
    app = create_app(factory)
    stop = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(serve, app, "127.0.0.1", 0, shutdown_trigger=stop.wait)
            )
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold() == GC_THRESHOLD
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://127.0.0.1:{port}/health")
            assert response.status_code == 200
            stop.set()


async def test_serve_freeze_heap_off(unfrozen: None) -> None:
    before = gc.get_threshold()
    app = create_app(factory)
    stop = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    serve,
                    app,
                    "127.0.0.1",
                    0,
                    shutdown_trigger=stop.wait,
                    freeze_heap=False,
                    gc_threshold=None,
                )
            )
            assert gc.get_freeze_count() == 0
            assert gc.get_threshold() == before
            stop.set()
