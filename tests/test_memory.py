"""Memory stays flat with a fast producer and a slow consumer (coalesce and spill).

10^6 small deltas; the consumer reads one item per simulated second (MockClock); memory is
measured with tracemalloc and must stay under the channel's byte budget plus a small constant,
and the text received must equal the text produced.
"""

from __future__ import annotations

import hashlib
import tracemalloc

import pytest
import trio

from pipeline import Done, Emit, EventReceiver, Pipeline, Route, TextDelta

N = 1_000_000
BUDGET = 64 * 1024
# What is not queued but still alive: the item the consumer holds while the channel refills
# (up to BUDGET of text, and its copies: the merged buffer, the decoded str, the consumer's
# own encode), the spill file's 64 KiB read and write buffers, the source channel's 64 items and
# task frames. It does not depend on the number of deltas (measured: ~250 KB with coalesce,
# ~480 KB with spill; the text produced is ~2.3 MB).
CONSTANT = 640 * 1024


class HashingProducer:
    def __init__(self, n: int) -> None:
        self.n = n
        self.digest = hashlib.sha256()
        self.chars = 0

    async def stream(self, emit: Emit, /) -> None:
        for i in range(self.n):
            text = "abcdé "[i % 6] * (1 + i % 3)
            self.digest.update(text.encode())
            self.chars += len(text)
            await emit(TextDelta(text))
        await emit(Done("stop"))


class SlowHashingSink:
    """Reads one item per simulated second; keeps only a hash of the text."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.chars = 0
        self.items = 0

    async def consume(self, events: EventReceiver) -> None:
        async for event in events:
            self.items += 1
            if isinstance(event, TextDelta):
                self.digest.update(event.text.encode())
                self.chars += len(event.text)
            await trio.sleep(1)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("policy", ["coalesce", "spill"])
async def test_memory_flat_with_a_million_deltas_and_a_slow_consumer(
    autojump_clock: trio.abc.Clock, policy: str
) -> None:
    producer = HashingProducer(N)
    sink = SlowHashingSink()
    pipe = Pipeline(
        producer,
        sinks=[Route(sink, policy=policy, max_items=64, max_bytes=BUDGET)],  # type: ignore[arg-type]
    )
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        stats = await pipe.run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sink.chars == producer.chars
    assert sink.digest.hexdigest() == producer.digest.hexdigest()
    assert peak - base < BUDGET + CONSTANT, f"peak {peak - base} bytes over baseline"
    channel = stats.sinks[0].channel
    assert channel.high_water_bytes <= BUDGET
    # The consumer read far fewer, larger items than the producer wrote.
    assert sink.items < N / 100
    if policy == "spill":
        assert channel.items_spilled > N / 2
    else:
        assert channel.items_coalesced > N / 2
