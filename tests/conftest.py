"""Shared pytest fixtures."""

from __future__ import annotations

# --- emulator fixture (pipeline.emulator) --------------------------------------------------------
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pytest
import trio

if TYPE_CHECKING:
    from pipeline.emulator import Emulator, ReplySource

EmulatorFactory = Callable[..., Awaitable["Emulator"]]


@pytest.fixture
def emulator(nursery: trio.Nursery) -> EmulatorFactory:
    """A factory: ``emu = await emulator(Reply("Hi there"))`` starts a loopback provider
    emulator on a free port (default reply: ``DEFAULT_REPLY``); it serves until the end of the
    test (it runs in pytest-trio's ``nursery`` fixture)."""
    from pipeline.emulator import DEFAULT_REPLY, serve_emulator

    async def start(reply: ReplySource = DEFAULT_REPLY) -> Emulator:
        started: Emulator = await nursery.start(serve_emulator, "127.0.0.1", 0, reply)
        return started

    return start


# --- end of emulator fixture --------------------------------------------------------------------
