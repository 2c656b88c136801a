"""The memory store's budget is the memory it uses.

``stored_nbytes`` counts an event as CPython allocates it (checked here against tracemalloc),
and a server full of unread resumable generations grows its RSS by no more than the store's
budget plus ``bench_store_memory.CONSTANT`` (a real server subprocess, measured by
``benchmarks/bench_store_memory.py --quick``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from pipeline import Done, Error, Event, TextDelta, ToolCallEnd, event_from_json, event_to_json
from pipeline.stores import MemoryStore, StoreFull, stored_nbytes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_store_memory import CONSTANT, MiB  # noqa: E402


def _decoded(i: int) -> list[Event]:
    """Events as a store receives them (fresh objects, as decoded JSON gives them)."""
    evs: list[Event] = [
        TextDelta("ab"[: 1 + i % 2] + "cdéf"[i % 4 :], seq=1000 + i),
        TextDelta("🙂 word" * (i % 3), seq=2000 + i),
        Error("upstream", "the provider failed", partial_text="x" * (i % 50), seq=3000 + i),
        ToolCallEnd(0, f"call_{i}", "get_weather", '{"city": "Paris"}', seq=4000 + i),
        Done("stop", seq=5000 + i),
    ]
    return [event_from_json(event_to_json(ev)) for ev in evs]


@pytest.mark.parametrize("which", range(5))
def test_stored_nbytes_is_at_least_what_the_event_takes(which: int) -> None:
    events = [_decoded(i)[which] for i in range(2000)]
    counted = sum(map(stored_nbytes, events))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [event_from_json(event_to_json(ev)) for ev in events]
        seqs = [ev.seq for ev in held]
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(seqs) == len(held) == len(events)
    # Counted per event: at least what it took, and not wildly more (the str cache of small
    # strings and shared small ints are counted anyway).
    assert used <= counted <= 1.5 * used


def test_a_tiny_delta_is_not_counted_as_its_text() -> None:
    # The accounting this replaced counted 5 + 100 bytes; the objects take 176.
    assert stored_nbytes(TextDelta("hello", seq=1000)) == 64 + 64 + 48


async def test_a_store_refuses_what_would_pass_its_memory() -> None:
    store = MemoryStore(max_total_bytes=1 * MiB)
    await store.create("s")
    seq = 0
    with pytest.raises(StoreFull):
        while True:
            batch = [TextDelta(f"w{seq + i}", seq=seq + i + 1) for i in range(100)]
            await store.append("s", batch)
            seq += 100
    # What it holds by the objects' own measure (and the allocators' slack): 1 MiB is ~4,600
    # short deltas, not the ~10,000 that counting their text + 100 bytes let in.
    assert 4_000 <= seq <= 5_200
    assert store.total_bytes <= 1 * MiB


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_unread_generations_stay_within_the_budget_in_rss() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_store_memory.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=True,
    )
    figures = json.loads(result.stdout.splitlines()[-1])
    budget = figures["budget_mib"]
    assert figures["counted_mib"] >= 0.9 * budget  # the store really filled
    assert figures["growth_mib"] <= budget + CONSTANT / MiB, result.stderr
