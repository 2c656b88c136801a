"""Embed a pipeline in a trio service: read the events yourself, with a file sink beside you.

    python examples/embed_in_a_trio_service.py

The caller reads the stream through ``Pipeline.events()``, one sentence per event (policy
``block``: a slow caller slows the producer; ``policy="coalesce"`` would merge sentences instead).
Leaving the ``async with`` early would cancel the producer and its upstream request.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio

from pipeline import Done, Error, Pipeline, TextDelta
from pipeline.producers import ScriptedProducer
from pipeline.text import SentenceStage
from sinks import EventLogSink


async def handle_request(prompt: str, log_dir: Path) -> str:
    producer = ScriptedProducer.from_text(f"You asked: {prompt}. Here is a short answer. Bye!")
    pipeline = Pipeline(
        producer,
        stages=[SentenceStage(stall_timeout=0.5)],
        sinks=[EventLogSink(log_dir / "events.jsonl")],
    )
    sentences = []
    async with pipeline.events() as events:
        async for event in events:
            if isinstance(event, TextDelta):
                sentences.append(event.text)
                print(f"sentence #{event.seq}: {event.text!r}")
            elif isinstance(event, Error):
                print(f"failed: {event.kind}: {event.message}")
            elif isinstance(event, Done):
                print(f"done ({event.stop_reason})")
    return "".join(sentences)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        answer = await handle_request("what is backpressure", Path(tmp))
        lines = (Path(tmp) / "events.jsonl").read_text().splitlines()
        print(f"{len(answer)} chars, {len(lines)} events logged")


if __name__ == "__main__":
    trio.run(main)
