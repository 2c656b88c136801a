"""Batch document generation (sinks.batch) against the provider emulator, under MockClock.

The real openai SDK talks to the emulator over loopback HTTP; time is trio's MockClock, so a
run of several simulated minutes under per-minute limits takes a second or two.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from pipeline import Backoff, ConfigError, Producer
from pipeline.producers import CostGuard, OpenAIChatProducer, RetryPolicy, openai_client
from pipeline.testing.emulator import Emulator, RateLimits, Reply, RequestRecord, status
from sinks.batch import (
    Batch,
    BatchConfig,
    BatchEnded,
    InvalidLine,
    Job,
    JobDone,
    JobFailed,
    JobRetrying,
    JobsFile,
    JobSkipped,
    LineSkipped,
    LocalLimiter,
    RateLimited,
    open_directory,
    parse_job,
    parse_jobs,
)

EmulatorFactory = Callable[..., Awaitable[Emulator]]
KEY = "sk-llmpipe-test-batch-0123456789abcdef"
NO_RETRY = RetryPolicy(max_attempts=1)
FAST = RetryPolicy(max_attempts=4, backoff=Backoff(initial=0.5, maximum=4.0))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_jobs(path: Path, n: int, **extra: Any) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"job-{i}", "prompt": f"Job {i}: write about {i}.", **extra}))
            f.write("\n")
    return path


def job_number(record: RequestRecord) -> int:
    content = record.body["messages"][-1]["content"]
    match = re.match(r"Job (\d+):", content)
    assert match, content
    return int(match.group(1))


def answer(i: int) -> str:
    return f"Document {i}: a short text about {i}, complete."


# ---------------------------------------------------------------------------------------------
# Jobs


def test_both_line_formats() -> None:
    openai_line = {
        "custom_id": "request-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 100,
        },
    }
    job = parse_job(json.dumps(openai_line), 3)
    assert (job.custom_id, job.model, job.max_tokens, job.line) == (
        "request-1",
        "gpt-4o-mini",
        100,
        3,
    )
    assert job.output == "request-1.md"
    responses = parse_job(
        json.dumps(
            {
                "custom_id": "r2",
                "url": "/v1/responses",
                "body": {"input": "Hello", "instructions": "Be brief", "max_output_tokens": 9},
            }
        )
    )
    assert [m["role"] for m in responses.messages] == ["system", "user"]
    assert responses.max_tokens == 9
    short = parse_job('{"id": 7, "prompt": "Hi", "system": "S", "output": "seven.txt"}')
    assert (short.custom_id, short.output, short.prompt_texts()) == ("7", "seven.txt", ["S", "Hi"])
    assert parse_job('{"id": "a/b c", "messages": [{"role": "user", "content": "x"}]}').output == (
        "a_b_c.md"
    )


def test_invalid_lines_are_reported_with_their_number_and_skipped() -> None:
    lines = [
        '{"id": "a", "prompt": "fine"}',
        "",
        "not json",
        '{"id": "b"}',
        '{"id": "c", "prompt": "x", "output": "../escape.md"}',
        '{"custom_id": "d", "url": "/v1/embeddings", "body": {}}',
        '{"id": "e", "prompt": "x", "max_tokens": 0}',
        '{"id": "f", "prompt": "also fine"}',
    ]
    items = list(parse_jobs(lines))
    assert [type(i).__name__ for i in items] == ["Job"] + ["InvalidLine"] * 5 + ["Job"]
    invalid = [i for i in items if isinstance(i, InvalidLine)]
    assert [i.line for i in invalid] == [3, 4, 5, 6, 7]
    assert "not JSON" in invalid[0].message
    assert "prompt" in invalid[1].message
    assert "output" in invalid[2].message
    assert "/v1/embeddings" in invalid[3].message
    assert "max_tokens" in invalid[4].message


async def test_jobs_file_reports_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(
        '{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n'
        '{"id": "b", "prompt": "x", "output": "a.md"}\n\xff{bad\n{"id": "c", "prompt": "z"}\n'
    )
    items = [item async for item in JobsFile(path)]
    assert [i.custom_id for i in items if isinstance(i, Job)] == ["a", "c"]
    assert [(i.line, i.message.split(":")[0]) for i in items if isinstance(i, InvalidLine)] == [
        (2, "id 'a' is used twice"),
        (3, "output 'a.md' is used twice"),
        (4, "not JSON"),
    ]


# ---------------------------------------------------------------------------------------------
# The limiter


async def test_limiter_spaces_requests_per_window(autojump_clock: trio.testing.MockClock) -> None:
    limiter = LocalLimiter(concurrency=None, requests_per_minute=3, window=10.0)
    admitted = []
    for _ in range(7):
        permit = await limiter.acquire(1)
        admitted.append(trio.current_time())
        await permit.release(1)
    start = admitted[0]
    assert [round(t - start, 6) for t in admitted] == [0, 0, 0, 10, 10, 10, 20]


async def test_limiter_tokens_estimate_then_usage(autojump_clock: trio.testing.MockClock) -> None:
    limiter = LocalLimiter(concurrency=None, tokens_per_minute=100, window=10.0)
    start = trio.current_time()
    first = await limiter.acquire(60)
    # The second does not fit next to the first's estimate...
    with trio.move_on_after(1):
        await limiter.acquire(60)
    # ...but does once the first reports it used only 20.
    await first.release(20)
    await limiter.acquire(60)
    assert trio.current_time() - start == pytest.approx(1.0)
    stats = limiter.statistics()
    assert (stats.running, stats.tokens) == (1, 80)
    # Over the whole limit: refused at once, nothing counted.
    with pytest.raises(ConfigError, match="over the limit of 100 tokens per minute"):
        await limiter.acquire(101)


async def test_limiter_pause_holds_everyone(autojump_clock: trio.testing.MockClock) -> None:
    limiter = LocalLimiter(concurrency=2)
    start = trio.current_time()
    await limiter.pause(5.0)
    await limiter.pause(1.0)  # shorter: changes nothing
    permit = await limiter.acquire(1)
    assert trio.current_time() - start == pytest.approx(5.0)
    await limiter.acquire(1)
    with trio.move_on_after(3):  # concurrency 2: the third waits for a release
        await limiter.acquire(1)
    assert limiter.statistics().running == 2
    await permit.release()
    await limiter.acquire(1)


# ---------------------------------------------------------------------------------------------
# The runner against the emulator


def chat_producers(client: Any) -> Callable[[Job], Producer]:
    def make(job: Job) -> Producer:
        return OpenAIChatProducer(
            client,
            model=job.model or "emulated-gpt",
            messages=[dict(m) for m in job.messages],
            max_tokens=job.max_tokens,
            retry=NO_RETRY,
            first_token_timeout=None,
            stall_timeout=None,
        )

    return make


async def test_two_hundred_jobs_with_faults_stay_inside_the_limits(
    emulator: EmulatorFactory, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    rpm, tpm = 30, 1000
    always_failing = {13, 53, 93, 133, 173}
    attempts: Counter[int] = Counter()

    def reply(record: RequestRecord) -> Reply:
        i = job_number(record)
        attempts[i] += 1
        # input_tokens: what llmpipe's estimate would say of the prompt, or less.
        if i in always_failing:
            return Reply("x", fault=status(500))
        if attempts[i] == 1 and i % 10 == 3:
            return Reply("x", fault=status(500))
        if attempts[i] == 1 and i % 10 == 7:
            return Reply("x", fault=status(429, retry_after=5))
        return Reply(answer(i), input_tokens=10)

    emu = await emulator(reply)
    emu.limits = RateLimits(requests_per_minute=rpm, tokens_per_minute=tpm)
    jobs = write_jobs(tmp_path / "jobs.jsonl", 200, max_tokens=40)
    out = tmp_path / "out"
    events = []
    async with (
        openai_client(base_url=emu.openai_base_url, api_key=KEY) as client,
        open_directory(out) as directory,
    ):
        batch = Batch(
            chat_producers(client),
            directory,
            LocalLimiter(concurrency=8, requests_per_minute=rpm, tokens_per_minute=tpm),
            BatchConfig(workers=8, retry=FAST),
        )
        async with batch.events(JobsFile(jobs), total=200) as received:
            async for event in received:
                events.append(event)
    stats = batch.statistics()

    # Every job ended done or failed with a reason.
    results = {r["custom_id"]: r for r in read_jsonl(out / "results.jsonl")}
    errors = {r["custom_id"]: r for r in read_jsonl(out / "errors.jsonl")}
    assert set(results) | set(errors) == {f"job-{i}" for i in range(200)}
    assert set(errors) == {f"job-{i}" for i in always_failing}
    for record in errors.values():
        assert record["response"]["status_code"] == 500
        assert "HTTP 500" in record["error"]["message"]
        assert record["llmpipe"]["attempts"] == FAST.max_attempts
    assert (stats.done, stats.failed, stats.invalid) == (195, 5, 0)

    # The provider's limits were never exceeded in any 60-second window, and never hit.
    most_requests, most_tokens = emu.peak_usage(60.0)
    assert most_requests <= rpm
    assert most_tokens <= tpm
    assert not any(r.rate_limited for r in emu.requests)
    assert most_requests == rpm  # the limits were what held the run back
    # Each injected 429 paused everyone: no request started during its retry-after.
    for r in emu.requests:
        if r.status == 429:
            later = [x.received_at for x in emu.requests if x.received_at > r.received_at]
            assert min(later) >= r.received_at + 5

    # Documents complete, each job answered once.
    for i in range(200):
        if i in always_failing:
            assert not (out / f"job-{i}.md").exists()
            continue
        assert (out / f"job-{i}.md").read_text() == answer(i)
        body = results[f"job-{i}"]["response"]["body"]
        assert body["choices"][0]["message"]["content"] == answer(i)
        assert body["usage"] == {
            "prompt_tokens": 10,
            "completion_tokens": len(answer(i).split()),
            "total_tokens": 10 + len(answer(i).split()),
        }
    served = Counter(job_number(r) for r in emu.requests if r.status == 200)
    assert set(served.values()) == {1}
    assert sorted(f.name for f in out.iterdir() if f.name.startswith(".")) == []  # no temp left

    # The events tell the same story.
    assert isinstance(events[-1], BatchEnded)
    assert sum(isinstance(e, JobDone) for e in events) == 195
    assert sum(isinstance(e, JobFailed) for e in events) == 5
    assert sum(isinstance(e, RateLimited) for e in events) == 20
    assert any(isinstance(e, JobRetrying) for e in events)


async def test_rerun_skips_what_is_done_and_redoes_the_rest(
    emulator: EmulatorFactory, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    failing = {2}

    def reply(record: RequestRecord) -> Reply:
        i = job_number(record)
        return Reply("x", fault=status(400)) if i in failing else Reply(answer(i))

    emu = await emulator(reply)
    jobs = write_jobs(tmp_path / "jobs.jsonl", 5)
    out = tmp_path / "out"

    async def run_once() -> list[Any]:
        async with (
            openai_client(base_url=emu.openai_base_url, api_key=KEY) as client,
            open_directory(out) as directory,
        ):
            batch = Batch(chat_producers(client), directory, config=BatchConfig(retry=FAST))
            async with batch.events(JobsFile(jobs)) as received:
                return [event async for event in received]

    first = await run_once()
    assert sum(isinstance(e, JobFailed) for e in first) == 1  # 400: not retried
    assert len(emu.requests) == 5
    failing.clear()
    second = await run_once()
    assert sorted(e.custom_id for e in second if isinstance(e, JobSkipped)) == [
        "job-0", "job-1", "job-3", "job-4"
    ]  # fmt: skip
    assert [e.custom_id for e in second if isinstance(e, JobDone)] == ["job-2"]
    assert len(emu.requests) == 6  # only the failed job was sent again
    assert sorted(r["custom_id"] for r in read_jsonl(out / "results.jsonl")) == [
        f"job-{i}" for i in range(5)
    ]
    assert read_jsonl(out / "errors.jsonl") == []  # compacted: job-2 is done now


async def test_torn_last_line_is_cut_and_its_job_redone(
    emulator: EmulatorFactory, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    emu = await emulator(lambda record: Reply(answer(job_number(record))))
    jobs = write_jobs(tmp_path / "jobs.jsonl", 3)
    out = tmp_path / "out"
    out.mkdir()
    done = {"custom_id": "job-0", "response": {"body": {"usage": {"total_tokens": 5}}}}
    (out / "results.jsonl").write_text(json.dumps(done) + '\n{"custom_id": "job-1", "resp')
    async with (
        openai_client(base_url=emu.openai_base_url, api_key=KEY) as client,
        open_directory(out) as directory,
    ):
        assert directory.is_done("job-0")
        assert not directory.is_done("job-1")
        assert directory.spent_tokens == 5
        stats = await Batch(chat_producers(client), directory).run(JobsFile(jobs))
    assert (stats.done, stats.skipped) == (2, 1)
    assert sorted(job_number(r) for r in emu.requests) == [1, 2]
    ids = [r["custom_id"] for r in read_jsonl(out / "results.jsonl")]
    assert ids[0] == "job-0"
    assert sorted(ids) == ["job-0", "job-1", "job-2"]


async def test_cost_guard_and_budget_stop_before_sending(
    emulator: EmulatorFactory, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    emu = await emulator(lambda record: Reply(answer(job_number(record)), input_tokens=3))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        '{"id": "big", "prompt": "Job 0: '
        + "word " * 400
        + '"}\n'
        + "".join(f'{{"id": "j{i}", "prompt": "Job {i}: go."}}\n' for i in range(1, 6))
    )
    out = tmp_path / "out"
    async with (
        openai_client(base_url=emu.openai_base_url, api_key=KEY) as client,
        open_directory(out) as directory,
    ):
        config = BatchConfig(
            workers=1,
            cost_guard=CostGuard(max_input_tokens=100),
            max_tokens_total=60,
            default_max_tokens=20,
        )
        stats = await Batch(chat_producers(client), directory, config=config).run(JobsFile(jobs))
    errors = {r["custom_id"]: r["error"] for r in read_jsonl(out / "errors.jsonl")}
    assert errors["big"]["code"] == "cost_limit"
    assert "max_input_tokens" in errors["big"]["message"]
    # Each small job: estimate 7 (prompt) + 20 (output limit) = 27 tokens; usage 3 + 8 = 11.
    # 60 tokens: j1 and j2 reserve 27 each and spend 11 each; j3 and j4 fit in what is left
    # (60 - 22 = 38 >= 27, then 60 - 33 = 27 >= 27); j5 does not (60 - 44 = 16).
    assert sorted(errors) == ["big", "j5"]
    assert errors["j5"]["code"] == "budget"
    assert "nothing was sent" in errors["j5"]["message"]
    assert sorted(job_number(r) for r in emu.requests) == [1, 2, 3, 4]  # nothing sent for big, j5
    assert (stats.done, stats.failed) == (4, 2)


async def test_invalid_lines_become_events_and_the_rest_goes_on(
    emulator: EmulatorFactory, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    emu = await emulator(lambda record: Reply(answer(job_number(record))))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "prompt": "Job 1: x"}\n{oops\n{"id": "b", "prompt": "Job 2: y"}\n')
    async with (
        openai_client(base_url=emu.openai_base_url, api_key=KEY) as client,
        open_directory(tmp_path / "out") as directory,
    ):
        batch = Batch(chat_producers(client), directory)
        async with batch.events(JobsFile(jobs)) as received:
            events = [event async for event in received]
    skipped = [e for e in events if isinstance(e, LineSkipped)]
    assert [(e.line, e.message.split(":")[0]) for e in skipped] == [(2, "not JSON")]
    assert sorted(e.custom_id for e in events if isinstance(e, JobDone)) == ["a", "b"]


async def test_emulator_rate_limits_answer_429_with_retry_after(
    emulator: EmulatorFactory, autojump_clock: trio.testing.MockClock
) -> None:
    emu = await emulator(Reply("one two three", input_tokens=7))  # 10 tokens a request
    emu.limits = RateLimits(requests_per_minute=2, tokens_per_minute=25, window=10.0)
    async with openai_client(base_url=emu.openai_base_url, api_key=KEY) as client:
        make = chat_producers(client)
        job = Job("x", [{"role": "user", "content": "hi"}], "x.md", max_tokens=5)
        outcomes = []
        for _ in range(3):
            try:
                await make(job).stream(_ignore)
                outcomes.append("ok")
            except Exception as exc:
                outcomes.append(f"{getattr(exc, 'status_code', '?')} {exc.retry_after}")  # type: ignore[attr-defined]
            await trio.sleep(1)
    # At t=2 the third fits neither limit until the first leaves the window, at t=10.
    assert outcomes == ["ok", "ok", "429 8.0"]
    assert [r.counted for r in emu.requests] == [True, True, False]
    assert emu.peak_usage() == (2, 20)


async def _ignore(event: object) -> None:
    pass


async def test_leaving_the_events_block_early_cancels_the_batch(
    emulator: EmulatorFactory, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    # Every job but the first streams slower, so another one is always in flight when the first
    # is done (equal jobs could all end at the same emulated instant, and nothing be cancelled).
    def reply(record: RequestRecord) -> Reply:
        n = job_number(record)
        return Reply(answer(n), tokens_per_second=5 if n == 1 else 1)

    emu = await emulator(reply)
    jobs = write_jobs(tmp_path / "jobs.jsonl", 20)
    out = tmp_path / "out"
    async with (
        openai_client(base_url=emu.openai_base_url, api_key=KEY) as client,
        open_directory(out) as directory,
    ):
        batch = Batch(chat_producers(client), directory, LocalLimiter(concurrency=2))
        async with batch.events(JobsFile(jobs)) as received:
            async for event in received:
                if isinstance(event, JobDone):
                    break
        stats = batch.statistics()
    assert 1 <= stats.done < 20
    assert stats.running == 0
    assert stats.limiter.running == 0  # the permits of the abandoned requests came back
    assert len(read_jsonl(out / "results.jsonl")) == stats.done
    for r in emu.requests:
        await r.ended.wait()
    assert {r.outcome for r in emu.requests} <= {"completed", "disconnected"}
    assert any(r.outcome == "disconnected" for r in emu.requests)  # in flight: cancelled


def test_status_text_and_summary() -> None:
    from sinks.batch import BatchStatistics, LimiterStatistics
    from sinks.cli._batch import status_text, summary_line

    limiter = LimiterStatistics(3, 30, 900, 4, 60, None, 60.0, 0.0, 0)
    stats = BatchStatistics(
        total=100, done=20, failed=5, skipped=0, invalid=0, running=3, requests=40, retries=2,
        rate_limited=1, input_tokens=1000, output_tokens=2000, started_at=0.0, now=50.0,
        limiter=limiter,
    )  # fmt: skip
    assert status_text(stats) == (
        "done 20 failed 5 running 3 · 60 tok/s · 30/60 req/min · ETA 2:30"
    )
    assert summary_line(stats, "out") == (
        "20 done, 5 failed, 0 already done, 0 invalid lines; 3000 tokens, 40 requests in 0:50; "
        "the failures are in out/errors.jsonl"
    )


async def test_a_document_left_half_written_by_a_killed_run_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / ".job-1.md.4242.7f3a9c.tmp").write_text("half a docu")
    (out / ".notes").write_text("not ours")
    async with open_directory(out) as directory:
        assert not directory.is_done("job-1")
    assert sorted(p.name for p in out.iterdir()) == [".notes", "errors.jsonl", "results.jsonl"]
