"""``--via openai-batch``: the jobs through the Batch API (Files + Batches endpoints) of the
provider emulator, with the real openai SDK over loopback HTTP.

In process under MockClock (the batch stays ``in_progress`` for an emulated hour, polled every
minute), then the real command line against ``llmpipe emulate`` in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import openai
import pytest
import trio
import trio.testing
from test_batch_cli import ENV, ROOT, TEXT, batch_command, complete_lines, emulator, write_jobs

from pipeline.testing.emulator import Emulator, Reply, RequestRecord, serve_emulator, status
from sinks.batch import (
    ERRORS_FILE,
    PROVIDER_BATCH_FILE,
    RESULTS_FILE,
    BatchDirectory,
    JobsFile,
    ProviderBatchEnded,
    ProviderBatchEvent,
    ProviderBatchPolled,
    ProviderBatchSubmitted,
    open_directory,
    run_provider_batch,
)


def answer(record: RequestRecord) -> Reply:
    prompt = record.body["messages"][-1]["content"]
    if prompt == "Job 3":
        return Reply("x", fault=status(500, message="poisoned"))
    return Reply(f"The answer to {prompt}.", input_tokens=7)


def write_jobs_file(path: Path) -> Path:
    lines = [json.dumps({"id": f"j{i}", "prompt": f"Job {i}"}) for i in range(5)]
    lines.insert(2, "{not json")
    lines.append(
        json.dumps(
            {
                "custom_id": "batch-format",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "emulated-gpt", "messages": [{"role": "user", "content": "Hi"}]},
            }
        )
    )
    path.write_text("\n".join(lines) + "\n")
    return path


async def run_once(emu: Emulator, jobs: Path, out: Path) -> list[ProviderBatchEvent]:
    events: list[ProviderBatchEvent] = []
    client = openai.AsyncOpenAI(base_url=emu.openai_base_url, api_key="sk-test")
    try:
        async with open_directory(out) as directory:
            await run_provider_batch(
                client,
                JobsFile(jobs),
                directory,
                model="emulated-gpt",
                max_tokens=64,
                poll_interval=60,
                report=events.append,
            )
    finally:
        await client.close()
    return events


async def test_jobs_through_the_batch_api_then_resume(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    emu: Emulator = await nursery.start(
        partial(serve_emulator, "127.0.0.1", 0, answer, batch_delay=3600)
    )
    jobs = write_jobs_file(tmp_path / "jobs.jsonl")
    out = tmp_path / "out"
    start = trio.current_time()
    events = await run_once(emu, jobs, out)
    assert trio.current_time() - start >= 3600  # it waited for the batch, polling

    submitted = [e for e in events if isinstance(e, ProviderBatchSubmitted)]
    assert [e.requests for e in submitted] == [6]
    polls = [e for e in events if isinstance(e, ProviderBatchPolled)]
    assert [e.status for e in polls[:-1]] == ["in_progress"] * (len(polls) - 1)
    assert (polls[-1].status, polls[-1].completed, polls[-1].failed) == ("completed", 5, 1)
    assert events[-1] == ProviderBatchEnded(submitted[0].batch_id, "completed", 5, 1, 0, 1)
    assert [e.line for e in events if not hasattr(e, "batch_id")] == [3]  # the bad line

    # What went over the wire: one upload, one batch, polls, two downloads; no chat request.
    paths = [(r.method, r.path) for r in emu.requests]
    assert paths.count(("POST", "/v1/files")) == 1
    assert paths.count(("POST", "/v1/batches")) == 1
    assert sum(p.endswith("/content") for _, p in paths) == 2
    assert not any(p == "/v1/chat/completions" for _, p in paths)
    uploaded = json.loads(
        "[" + ",".join(emu.batch_store.content("file-emu0").decode().splitlines()) + "]"
    )
    assert [u["custom_id"] for u in uploaded] == ["j0", "j1", "j2", "j3", "j4", "batch-format"]
    assert uploaded[0] == {
        "custom_id": "j0",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "emulated-gpt",
            "messages": [{"role": "user", "content": "Job 0"}],
            "max_tokens": 64,
        },
    }

    # The same outputs as the streamed runner: documents, results.jsonl, errors.jsonl.
    results = {r["custom_id"]: r for r in complete_lines(out / RESULTS_FILE)}
    assert set(results) == {"j0", "j1", "j2", "j4", "batch-format"}
    assert (out / "j1.md").read_text() == "The answer to Job 1."
    assert (out / "batch-format.md").read_text() == "The answer to Hi."
    assert not (out / "j3.md").exists()
    usage = results["j0"]["response"]["body"]["usage"]
    assert (usage["prompt_tokens"], usage["total_tokens"]) == (7, 7 + usage["completion_tokens"])
    errors = complete_lines(out / ERRORS_FILE)
    assert [e["custom_id"] for e in errors] == ["j3"]
    assert errors[0]["response"]["status_code"] == 500
    assert "poisoned" in json.dumps(errors[0])

    # Run again: only the failed job is submitted (it fails again), the rest is skipped.
    again = await run_once(emu, jobs, out)
    submitted = [e for e in again if isinstance(e, ProviderBatchSubmitted)]
    assert [e.requests for e in submitted] == [1]
    assert again[-1] == ProviderBatchEnded(submitted[0].batch_id, "completed", 0, 1, 5, 1)
    assert len(complete_lines(out / RESULTS_FILE)) == 5


def test_cli_via_openai_batch(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", 4)
    out = tmp_path / "out"
    with emulator("--batch-delay", "0.3") as base_url:
        command = batch_command(jobs, out, base_url, "--via", "openai-batch")
        result = subprocess.run(
            [*command, "--poll-interval", "0.1"],
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert "submitted 4 jobs as batch_emu0" in result.stderr
    assert "4 done, 0 failed, 0 already done, 0 invalid lines" in result.stdout
    results: list[dict[str, Any]] = complete_lines(out / RESULTS_FILE)
    assert sorted(r["custom_id"] for r in results) == ["j0", "j1", "j2", "j3"]
    for i in range(4):
        assert (out / f"j{i}.md").read_text() == TEXT


def test_cli_via_openai_batch_refuses_another_provider(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", 1)
    command = [
        sys.executable, "-m", "sinks.cli", "batch", str(jobs), "--out", str(tmp_path / "o"),
        "--via", "openai-batch", "--provider", "anthropic",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "--via openai-batch" in result.stderr


async def test_a_run_stopped_mid_poll_is_resumed_not_submitted_again(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    emu: Emulator = await nursery.start(
        partial(serve_emulator, "127.0.0.1", 0, answer, batch_delay=3600)
    )
    jobs = write_jobs_file(tmp_path / "jobs.jsonl")
    out = tmp_path / "out"
    first: list[ProviderBatchEvent] = []
    client = openai.AsyncOpenAI(base_url=emu.openai_base_url, api_key="sk-test")
    with trio.CancelScope() as scope:  # stopped at its second poll, the batch in progress

        def report(event: ProviderBatchEvent) -> None:
            first.append(event)
            if sum(isinstance(e, ProviderBatchPolled) for e in first) == 2:
                scope.cancel()

        async with open_directory(out) as directory:
            await run_provider_batch(
                client, JobsFile(jobs), directory, model="emulated-gpt", max_tokens=64,
                poll_interval=60, report=report,
            )  # fmt: skip
    await client.close()
    assert scope.cancelled_caught
    assert [e.status for e in first if isinstance(e, ProviderBatchPolled)] == ["in_progress"] * 2
    (submitted,) = [e for e in first if isinstance(e, ProviderBatchSubmitted)]
    record = json.loads((out / PROVIDER_BATCH_FILE).read_text())
    assert record["batch_id"] == submitted.batch_id
    assert record["input_file_id"] == submitted.file_id
    assert len(record["custom_ids"]) == 6

    # The same command again: polls that batch, records its outcomes, submits nothing.
    again = await run_once(emu, jobs, out)
    (resumed,) = [e for e in again if isinstance(e, ProviderBatchSubmitted)]
    assert (resumed.batch_id, resumed.requests, resumed.resumed) == (submitted.batch_id, 6, True)
    assert again[-1] == ProviderBatchEnded(submitted.batch_id, "completed", 5, 1, 0, 1)
    paths = [(r.method, r.path) for r in emu.requests]
    assert paths.count(("POST", "/v1/batches")) == 1
    assert paths.count(("POST", "/v1/files")) == 1
    assert len(complete_lines(out / RESULTS_FILE)) == 5
    assert not (out / PROVIDER_BATCH_FILE).exists()

    # A record of a batch the provider does not know: submitted again (the failed job only).
    (out / PROVIDER_BATCH_FILE).write_text(json.dumps({"batch_id": "batch_gone"}))
    third = await run_once(emu, jobs, out)
    assert [e.requests for e in third if isinstance(e, ProviderBatchSubmitted)] == [1]
    assert [(r.method, r.path) for r in emu.requests].count(("POST", "/v1/batches")) == 2


class Killed(Exception):
    """The run dies here (as ``kill -9`` would: nothing after it runs)."""


async def test_a_run_killed_before_recording_its_batch_adopts_it_not_submitted_again(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu: Emulator = await nursery.start(
        partial(serve_emulator, "127.0.0.1", 0, answer, batch_delay=3600)
    )
    jobs = write_jobs_file(tmp_path / "jobs.jsonl")
    out = tmp_path / "out"
    record_provider_batch = BatchDirectory.record_provider_batch

    async def dies_once_the_batch_exists(self: BatchDirectory, record: Any) -> None:
        if record is not None and "batch_id" in record:
            raise Killed  # the batch is created; its id is never recorded
        await record_provider_batch(self, record)

    monkeypatch.setattr(BatchDirectory, "record_provider_batch", dies_once_the_batch_exists)
    with pytest.raises(Killed):
        await run_once(emu, jobs, out)
    monkeypatch.undo()
    record = json.loads((out / PROVIDER_BATCH_FILE).read_text())
    assert "batch_id" not in record
    assert record["input_file_id"] == "file-emu0"
    assert len(record["custom_ids"]) == 6
    (created,) = emu.batch_store.batches.values()

    # Other batches of the account, created since: the one of this run is on the second page.
    async with openai.AsyncOpenAI(base_url=emu.openai_base_url, api_key="sk-test") as client:
        other = await client.files.create(
            file=("other.jsonl", b"", "application/jsonl"), purpose="batch"
        )
    for _ in range(150):
        emu.batch_store.create({"input_file_id": other.id}, trio.current_time())

    # The same command again: finds that batch by its input file, polls it, submits nothing.
    again = await run_once(emu, jobs, out)
    (resumed,) = [e for e in again if isinstance(e, ProviderBatchSubmitted)]
    assert (resumed.batch_id, resumed.file_id) == (created["id"], "file-emu0")
    assert (resumed.requests, resumed.resumed) == (6, True)
    assert again[-1] == ProviderBatchEnded(created["id"], "completed", 5, 1, 0, 1)
    paths = [(r.method, r.path) for r in emu.requests]
    assert paths.count(("POST", "/v1/batches")) == 1  # by the first run only
    assert paths.count(("POST", "/v1/files")) == 2  # the first run's and the other one
    assert paths.count(("GET", "/v1/batches")) == 2  # two pages of 100
    assert len(complete_lines(out / RESULTS_FILE)) == 5
    assert not (out / PROVIDER_BATCH_FILE).exists()


async def test_a_record_whose_batch_was_never_created_is_submitted(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    emu: Emulator = await nursery.start(
        partial(serve_emulator, "127.0.0.1", 0, answer, batch_delay=60)
    )
    jobs = write_jobs_file(tmp_path / "jobs.jsonl")
    out = tmp_path / "out"
    out.mkdir()
    record = {"input_file_id": "file-lost", "file_created_at": 0, "custom_ids": ["j0"]}
    (out / PROVIDER_BATCH_FILE).write_text(json.dumps(record))
    events = await run_once(emu, jobs, out)
    assert [(e.requests, e.resumed) for e in events if isinstance(e, ProviderBatchSubmitted)] == [
        (6, False)
    ]
    paths = [(r.method, r.path) for r in emu.requests]
    assert paths.count(("GET", "/v1/batches")) == 1
    assert paths.count(("POST", "/v1/batches")) == 1
    assert events[-1] == ProviderBatchEnded("batch_emu0", "completed", 5, 1, 0, 1)


async def test_the_emulator_lists_batches_newest_first_in_pages(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    emu: Emulator = await nursery.start(partial(serve_emulator, "127.0.0.1", 0, answer))
    async with openai.AsyncOpenAI(base_url=emu.openai_base_url, api_key="sk-test") as client:
        assert [b.id async for b in client.batches.list()] == []
        file = await client.files.create(
            file=("f.jsonl", b"", "application/jsonl"), purpose="batch"
        )
        for _ in range(5):
            await client.batches.create(
                input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        first = await client.batches.list(limit=2)
        assert ([b.id for b in first.data], first.has_more) == (["batch_emu4", "batch_emu3"], True)
        listed = [b.id async for b in client.batches.list(limit=2)]  # the SDK follows `after`
        assert listed == [f"batch_emu{i}" for i in (4, 3, 2, 1, 0)]
        last = await client.batches.list(after="batch_emu1", limit=2)
        assert ([b.id for b in last.data], last.has_more) == (["batch_emu0"], False)
        with pytest.raises(openai.BadRequestError):
            await client.batches.list(limit=0)
    paths = [r.path for r in emu.requests if r.method == "GET"]
    assert paths.count("/v1/batches") == 7  # 1 + 1 + 3 pages + 1 + 1
