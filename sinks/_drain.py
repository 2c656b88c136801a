"""Read events in batches: what a sink that does I/O per batch needs."""

from __future__ import annotations

import trio

from pipeline import Event, EventReceiver

__all__ = ["receive_batch"]


async def receive_batch(events: EventReceiver, max_items: int = 256) -> list[Event]:
    """Wait for one event, then take whatever else is already queued (up to ``max_items``).

    Returns an empty list at the end of the stream. A slow writer thus makes one I/O call per
    batch instead of one per event, and a batch is bounded by ``max_items`` and what the
    channel's own budget let in.
    """
    try:
        batch = [await events.receive()]
    except trio.EndOfChannel:
        return []
    while len(batch) < max_items:
        try:
            batch.append(events.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return batch
