"""Stream a scripted answer through the pipeline into the terminal and a file.

python examples/scripted_to_terminal_and_file.py [OUT_FILE]
"""

from __future__ import annotations

import sys

import trio

from pipeline import Pipeline, Route
from pipeline.producers import ScriptedProducer
from pipeline.text import AdaptiveChunker
from sinks import TerminalSink, TextFileSink

TEXT = "Backpressure means the slowest reader sets the pace, unless its policy says otherwise. "


async def main(out: str) -> None:
    producer = ScriptedProducer.from_text(TEXT * 3, delay=0.005)
    stats = await Pipeline(
        producer,
        stages=[AdaptiveChunker(min_chars=8, interval=0.05)],
        sinks=[
            Route(TerminalSink(), policy="coalesce"),
            Route(TextFileSink(out), policy="coalesce"),
        ],
    ).run()
    print(f"[{stats.events_out} events, {stats.text_chars_out} chars -> {out}]", file=sys.stderr)


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "answer.txt")
