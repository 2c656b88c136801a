"""Generate one document per job of a JSON Lines file, inside rate limits, from a trio program.

    python examples/batch_documents.py                       # offline: the provider emulator
    python examples/batch_documents.py --base-url URL --model M   # any OpenAI-compatible server

``batch_jobs.jsonl`` beside this file mixes the OpenAI Batch request format and the short
form, with one broken line (reported with its number and skipped). The documents and
``results.jsonl`` / ``errors.jsonl`` go to a temporary directory; run the same batch again on
the same directory and every job is skipped (``results.jsonl`` is the manifest). The progress
arrives as events; the same thing on the command line is
``llmpipe batch examples/batch_jobs.jsonl --out DIR``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from pipeline.producers import RetryPolicy, open_backend
from pipeline.testing.emulator import Reply, RequestRecord, open_emulator
from sinks.batch import (
    Batch,
    BatchConfig,
    JobDone,
    JobFailed,
    JobsFile,
    JobSkipped,
    LineSkipped,
    LocalLimiter,
    backend_producers,
    open_directory,
)

JOBS = Path(__file__).with_name("batch_jobs.jsonl")


def emulated_answer(record: RequestRecord) -> Reply:
    prompt = record.body["messages"][-1]["content"]
    return Reply(f"(an emulated answer to: {prompt})", tokens_per_second=200)


@asynccontextmanager
async def provider(base_url: str | None) -> AsyncIterator[str]:
    """``base_url``, or the provider emulator's when none is given."""
    if base_url is not None:
        yield base_url
        return
    async with open_emulator(emulated_answer) as emulator:
        yield emulator.openai_base_url


async def run_batch(out: Path, base_url: str, model: str | None) -> None:
    # The batch retries (through the limiter): the producers' own retries are off.
    async with (
        open_backend(
            "openai", base_url=base_url, model=model, retry=RetryPolicy(max_attempts=1)
        ) as backend,
        open_directory(out) as directory,
    ):
        batch = Batch(
            backend_producers(backend),
            directory,
            LocalLimiter(concurrency=4, requests_per_minute=500, tokens_per_minute=100_000),
            BatchConfig(workers=4),
        )
        async with batch.events(JobsFile(JOBS)) as events:
            async for event in events:
                if isinstance(event, JobDone):
                    print(f"done     {event.custom_id} -> {event.output}")
                elif isinstance(event, JobFailed):
                    print(f"failed   {event.custom_id}: {event.kind}: {event.message}")
                elif isinstance(event, JobSkipped):
                    print(f"skipped  {event.custom_id} (already done)")
                elif isinstance(event, LineSkipped):
                    print(f"line {event.line} skipped: {event.message}")
    stats = batch.statistics()
    print(f"{stats.done} done, {stats.skipped} skipped, {stats.invalid} invalid line(s)")


async def main(base_url: str | None, model: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "documents"
        async with provider(base_url) as url:
            await run_batch(out, url, model)
            print("-- the same batch again:")
            await run_batch(out, url, model)
        for document in sorted(out.iterdir()):
            print(f"{document.name}: {document.stat().st_size} bytes")
        print((out / "limerick.txt").read_text())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible server (OPENAI_API_KEY)")
    parser.add_argument("--model", help="the model, for jobs that name none")
    args = parser.parse_args()
    if args.base_url is None:
        os.environ.setdefault("OPENAI_API_KEY", "sk-emulated")  # the emulator checks no key
    trio.run(main, args.base_url, args.model)
