"""Helpers shared by the HTTP app's tests (not a test module): a producer factory from a
function, the app served on a free port, and polling another task's state."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio

from pipeline import Producer
from sinks.server import StreamRequest, serve


def factory_of(make: Callable[[StreamRequest], Producer]) -> Any:
    """A producer factory (``create_app``'s first argument) that calls ``make``."""

    @asynccontextmanager
    async def factory(request: StreamRequest) -> AsyncIterator[Producer]:
        yield make(request)

    return factory


@asynccontextmanager
async def running(app: Any, *, trigger: trio.Event | None = None) -> AsyncIterator[str]:
    """Serve ``app`` on a free port for the block; cancelled at the end (abrupt) unless a
    ``trigger`` is given (then the caller shuts it down gracefully)."""
    async with trio.open_nursery() as nursery:
        wait = trigger.wait if trigger is not None else None
        port = await nursery.start(partial(serve, app, "127.0.0.1", 0, shutdown_trigger=wait))
        yield f"http://127.0.0.1:{port}"
        if trigger is None:
            nursery.cancel_scope.cancel()


async def eventually(predicate: Callable[[], bool], within: float = 2.0) -> None:
    """Poll ``predicate`` (state of another task or of the server) until true, or fail."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 (polling state that has no event)
            await trio.sleep(0.005)
