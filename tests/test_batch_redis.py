"""Batch workers on several processes: a Redis queue (consumer groups), limits shared through
Redis, a worker killed with SIGKILL midway, a poisoned job dead-lettered.

Real parts: ``llmpipe batch --submit`` / ``llmpipe worker`` / ``llmpipe batch status|collect``
as subprocesses, the private ``redis-server`` of the ``redis_url`` fixture, the in-process
provider emulator (its request log says what was sent, its limits answer 429 past them).
Real time: the limits' window is scaled down to a few seconds.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio
from test_batch import KEY, NO_RETRY, chat_producers

from pipeline.producers import CostGuard, CostLimitError, openai_client
from pipeline.testing.emulator import Emulator, RateLimits, Reply, RequestRecord, status
from sinks.batch import (
    BatchConfig,
    BudgetExhausted,
    Job,
    LocalLimiter,
    RedisJobQueue,
    RedisTokenBudget,
    Worker,
    WorkerConfig,
    job_to_json,
    open_redis_budget,
    open_redis_limiter,
)

EmulatorFactory = Callable[..., Awaitable[Emulator]]
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OPENAI_API_KEY": "sk-test-key-not-real"}
N = 30
WINDOW, RPM, TPM = 2.0, 8, 160  # per 2-s window; a job: estimate 10 + 12, uses 10 + 8


def answer(i: int) -> str:
    return f"Document {i}: a short text about {i}, complete."


def prompt_of(record: RequestRecord) -> str:
    content: str = record.body["messages"][-1]["content"]
    return content


def write_jobs(path: Path) -> Path:
    lines = [{"id": "poison", "prompt": "POISON", "max_tokens": 12}]
    lines += [{"id": f"j{i}", "prompt": f"Job {i}", "max_tokens": 12} for i in range(N)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sinks.cli", *args]


async def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(cli(*args), cwd=ROOT, env=ENV, capture_stdout=True,
                                  capture_stderr=True, check=False)  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_two_workers_one_killed_every_job_once_poison_dead_lettered(
    emulator: EmulatorFactory, redis_url: str, tmp_path: Path
) -> None:
    def reply(record: RequestRecord) -> Reply:
        text = prompt_of(record)
        if text == "POISON":
            return Reply("x", fault=status(500))
        return Reply(answer(int(text.split()[-1])), input_tokens=10, tokens_per_second=20)

    emu = await emulator(reply)
    emu.limits = RateLimits(RPM, TPM, WINDOW)
    jobs = write_jobs(tmp_path / "jobs.jsonl")
    out = tmp_path / "docs"
    queue_name = f"q{os.getpid()}"
    common = ("--redis", redis_url, "--queue", queue_name)

    submitted = await run_cli("batch", str(jobs), *common, "--submit")
    assert submitted.returncode == 0, submitted.stderr
    assert f"{N + 1} jobs submitted".encode() in submitted.stdout
    again = await run_cli("batch", str(jobs), *common, "--submit", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {
        "type": "submitted", "queue": queue_name, "added": 0, "already": N + 1, "invalid": 0,
    }  # fmt: skip

    def worker(name: str) -> list[str]:
        return cli(
            "worker", *common, "--out", str(out), "--consumer", name,
            "--provider", "openai", "--base-url", emu.openai_base_url, "--model", "emulated-gpt",
            "--concurrency", "3", "--rpm", str(RPM), "--tpm", str(TPM), "--window", str(WINDOW),
            "--attempts", "2", "--max-deliveries", "2", "--claim-idle", "3", "--until-empty",
        )  # fmt: skip

    async with RedisJobQueue(redis_url, name=queue_name) as queue:
        a = await trio.lowlevel.open_process(worker("A"), cwd=ROOT, env=ENV,
                                             stdout=subprocess.DEVNULL)  # fmt: skip
        b = await trio.lowlevel.open_process(worker("B"), cwd=ROOT, env=ENV,
                                             stdout=subprocess.DEVNULL)  # fmt: skip
        try:
            with trio.fail_after(60):
                while (await queue.counts()).done < 10:
                    assert a.poll() is None
                    assert b.poll() is None
                    await trio.sleep(0.05)
            a.send_signal(signal.SIGKILL)
            await a.wait()
            killed_at = trio.current_time()
            done_before = {r["custom_id"] for r in [x async for x in queue.results()]}
            with trio.fail_after(60):
                assert await b.wait() == 0
        finally:
            for proc in (a, b):
                if proc.poll() is None:
                    proc.kill()
                    await proc.wait()
        counts = await queue.counts()
        results = {r["custom_id"]: r async for r in queue.results()}
        dead = [r async for r in queue.dead_letters()]

    # Every job done exactly once, the poisoned one dead-lettered with its last error.
    assert (counts.done, counts.dead, counts.pending, counts.waiting) == (N, 1, 0, 0)
    assert set(results) == {f"j{i}" for i in range(N)}
    assert [d["custom_id"] for d in dead] == ["poison"]
    assert dead[0]["response"]["status_code"] == 500
    assert "HTTP 500" in dead[0]["error"]["message"]
    for i in range(N):
        assert (out / f"j{i}.md").read_text() == answer(i)
        assert results[f"j{i}"]["response"]["body"]["choices"][0]["message"]["content"] == answer(i)
    assert {r["llmpipe"]["worker"] for r in results.values()} == {"A", "B"}
    # No temporary file left, but one A was writing when it was killed (open_atomic's name:
    # .NAME.PID.HEX.tmp; no worker removes another process's, which may be on another machine).
    left = [f.name for f in out.iterdir() if f.name.startswith(".")]
    assert [name for name in left if f".{a.pid}." not in name] == []

    # The request log: a job was sent again only if it was in flight at the kill (at most A's
    # concurrency of them), never once recorded done; the poison had 2 deliveries.
    served = [r for r in emu.requests if r.status == 200]
    per_job = Counter(prompt_of(r) for r in served)
    assert set(per_job) == {f"Job {i}" for i in range(N)}
    twice = {p for p, n in per_job.items() if n > 1}
    assert max(per_job.values()) <= 2
    assert len(twice) <= 3
    for r in served:
        if r.received_at > killed_at:
            assert "j" + prompt_of(r).split()[-1] not in done_before
    poison = [r for r in emu.requests if prompt_of(r) == "POISON"]
    assert 3 <= len(poison) <= 4  # 2 attempts per delivery; A may have died inside one
    assert dead[0]["llmpipe"]["attempts"] == 2

    # The shared limits held across the two workers: no 429, no window over them.
    assert not any(r.rate_limited for r in emu.requests)
    most_requests, most_tokens = emu.peak_usage(WINDOW)
    assert most_requests <= RPM
    assert most_tokens <= TPM

    # status and collect, as the submitter sees them.
    shown = await run_cli("batch", "status", *common, "--json")
    assert json.loads(shown.stdout)["done"] == N
    assert json.loads(shown.stdout)["finished"]
    collected = tmp_path / "collected"
    result = await run_cli("batch", "collect", *common, "--out", str(collected))
    assert result.returncode == 1  # a dead-lettered job
    assert f"{N} documents collected".encode() in result.stdout
    lines = (collected / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["custom_id"] for x in lines) == sorted(results)
    assert [
        json.loads(x)["custom_id"] for x in (collected / "errors.jsonl").read_text().splitlines()
    ] == ["poison"]
    assert (collected / "j7.md").read_text() == answer(7)
    result = await run_cli("batch", "collect", *common, "--out", str(collected))
    assert b"0 documents collected" in result.stdout  # nothing twice


async def test_redis_limiter_shares_the_window_between_two_limiters(redis_url: str) -> None:
    name = f"lim{os.getpid()}"
    async with (
        coredis.Redis.from_url(redis_url, decode_responses=True) as client,
        open_redis_limiter(client, name=name, requests_per_minute=3, window=30.0) as one,
        open_redis_limiter(client, name=name, requests_per_minute=3, window=30.0) as two,
    ):
        permits = [await one.acquire(1), await two.acquire(1), await one.acquire(1)]
        with trio.move_on_after(0.5) as waited:  # the window is full for both
            await two.acquire(1)
        assert waited.cancelled_caught
        assert one.statistics().requests == 3
        for permit in permits:
            await permit.release(1)
        with pytest.raises(CostLimitError):
            await _over_tpm(client, name)
        await two.pause(0.2)
        assert two.statistics().pauses == 1


async def _over_tpm(client: Any, name: str) -> None:
    async with open_redis_limiter(client, name=name + "t", tokens_per_minute=10) as limiter:
        await limiter.acquire(11)


async def test_a_job_survives_the_queue_round_trip(redis_url: str) -> None:
    job = Job("x/1", [{"role": "user", "content": "héllo"}], "x_1.md", max_tokens=5, line=3)
    async with RedisJobQueue(redis_url, name=f"rt{os.getpid()}") as queue:
        await queue.delete()
        assert await queue.submit([job, job]) == 1
        [delivery] = await queue.read("c", block=0.1)
        assert delivery.job == job
        assert delivery.deliveries == 1
        assert await queue.read("c", block=0.01) == []
        counts = await queue.counts()
        assert (counts.submitted, counts.pending, counts.waiting) == (1, 1, 0)
        record = {"custom_id": job.custom_id, "response": None}
        fail = functools.partial(queue.fail, max_deliveries=2)
        assert await fail(delivery.id, job.custom_id, record, consumer="c") == "retry"
        [again] = await queue.claim("d", min_idle=0, max_deliveries=2)
        assert again.deliveries == 2
        assert await fail(again.id, job.custom_id, record, consumer="c") == "lost"  # d's now
        assert await fail(again.id, job.custom_id, record, consumer="d") == "dead"
        assert (await queue.counts()).finished
        assert [d["custom_id"] async for d in queue.dead_letters()] == ["x/1"]


async def test_workers_share_one_token_budget_then_requeue_the_refused(
    emulator: EmulatorFactory, redis_url: str, tmp_path: Path
) -> None:
    """``--max-tokens-total`` with ``--submit`` is one budget for the queue, whatever the
    number of workers: checked before sending, in Redis; a job it refuses is dead-lettered with
    the reason; ``llmpipe batch requeue`` puts it back once the budget is raised."""
    emu = await emulator(Reply(list("abcdefgh"), input_tokens=2))  # uses 2 + 8 = 10 tokens
    name = f"budget{os.getpid()}"
    common = ("--redis", redis_url, "--queue", name)
    n, budget = 10, 55
    jobs = [
        Job(f"b{i}", [{"role": "user", "content": f"Job {i}"}], f"b{i}.md", max_tokens=12)
        for i in range(n)
    ]
    estimate = CostGuard().check(jobs[0].prompt_texts(), 12) + 12  # what a job reserves
    async with RedisJobQueue(redis_url, name=name) as queue:
        await queue.delete()
        await queue.submit(jobs)
        await queue.set_budget(budget)

    async def work(consumer: str) -> None:
        async with (
            RedisJobQueue(redis_url, name=name) as queue,
            openai_client(base_url=emu.openai_base_url, api_key=KEY) as client,
            open_redis_budget(queue.client, name=name) as shared,
        ):
            settings = WorkerConfig(consumer, claim_idle=5, until_empty=True, block=0.05)
            config = BatchConfig(workers=3, retry=NO_RETRY)
            limiter = LocalLimiter(concurrency=3)
            await Worker(queue, chat_producers(client), limiter, config, settings, shared).run()

    async def two_workers() -> None:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(work, "A")
                nursery.start_soon(work, "B")

    await two_workers()
    # Each job spends 10 and reserves `estimate` before it is sent: the jobs that fit.
    fits = next(k for k in range(n + 1) if 10 * k + estimate > budget)
    assert 2 <= fits < n
    served = [r for r in emu.requests if r.status == 200]
    assert len(served) == fits  # nothing sent past the budget, by either worker
    async with RedisJobQueue(redis_url, name=name) as queue:
        counts = await queue.counts()
        dead = [d async for d in queue.dead_letters()]
    assert (counts.done, counts.dead, counts.pending, counts.waiting) == (fits, n - fits, 0, 0)
    assert (counts.spent, counts.budget) == (10 * fits, budget)
    for record in dead:  # recorded failed once, with the reason, not retried
        assert record["error"]["code"] == "budget"
        assert "max_tokens_total" in record["error"]["message"]
        assert "nothing was sent" in record["error"]["message"]
    shown = await run_cli("batch", "status", *common)
    assert f"{10 * fits} tokens used of a budget of {budget}".encode() in shown.stdout

    # Raise the budget (submitting again adds no job), requeue the refused, run again.
    jobs_file = tmp_path / "jobs.jsonl"
    await trio.Path(jobs_file).write_text("".join(job_to_json(j) + "\n" for j in jobs))
    raised = await run_cli("batch", str(jobs_file), *common, "--submit",
                           "--max-tokens-total", "1000")  # fmt: skip
    assert b"0 jobs submitted" in raised.stdout, raised.stderr
    requeued = await run_cli("batch", "requeue", *common)
    assert requeued.returncode == 0, requeued.stderr
    assert f"{n - fits} dead-lettered jobs put back".encode() in requeued.stdout
    shown = await run_cli("batch", "status", *common, "--json")
    status_now = json.loads(shown.stdout)
    assert (status_now["dead"], status_now["waiting"], status_now["requeued"]) == (
        0,
        n - fits,
        n - fits,
    )
    assert (status_now["submitted"], status_now["budget"]) == (n, 1000)
    await two_workers()
    async with RedisJobQueue(redis_url, name=name) as queue:
        counts = await queue.counts()
        assert await queue.requeue() == 0  # nothing left to requeue
    assert (counts.done, counts.dead, counts.pending, counts.waiting) == (n, 0, 0, 0)
    assert counts.spent == 10 * n
    assert len([r for r in emu.requests if r.status == 200]) == n  # each job sent once


async def test_the_reservation_of_a_dead_worker_counts_as_spent(redis_url: str) -> None:
    name = f"lease{os.getpid()}"
    async with RedisJobQueue(redis_url, name=name) as queue:
        await queue.delete()
        await queue.set_budget(30)
        # No lease refresher: as if its worker died with the request sent.
        dead = RedisTokenBudget(queue.client, name=name, lease=0.2)
        permit = await dead.reserve(20)
        async with open_redis_budget(queue.client, name=name, poll=0.05) as live:
            with trio.fail_after(10), pytest.raises(BudgetExhausted, match="10 of 30 are left"):
                await live.reserve(20)  # waits while it may fit, until that lease runs out
            ok = await live.reserve(10)
            await ok.release(4)
        await permit.release(1)  # too late: it was counted as its reservation already
        assert (await queue.counts()).spent == 24


async def _monitor_until(url: str, started: trio.Event, marker: str) -> list[tuple[str, str]]:
    """Redis ``MONITOR`` until ``ECHO marker``: (who, command) for every command, ``who`` being
    ``lua`` for the commands a script ran inside Redis, else the client's address."""
    host, port = url.removeprefix("redis://").partition("/")[0].split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(b"MONITOR\r\n")
        buf = b""
        while b"\r\n" not in buf:
            buf += await stream.receive_some()
        assert buf.startswith(b"+OK\r\n"), buf
        buf = buf.removeprefix(b"+OK\r\n")
        started.set()
        seen: list[tuple[str, str]] = []
        while True:
            *lines, buf = buf.split(b"\r\n")
            for line in lines:
                match = re.match(r'^\+[\d.]+ \[\d+ ([^\]]+)\] "(\w+)"(.*)$', line.decode())
                assert match, line
                who, command, rest = match.groups()
                if command.lower() == "echo" and marker in rest:
                    return seen
                seen.append(("lua" if who == "lua" else "client", command.lower()))
            buf += await stream.receive_some()


async def test_the_budget_costs_one_round_trip_to_reserve_and_one_to_settle(
    redis_url: str,
) -> None:
    """Without a budget set the workers still count what they spend (``llmpipe batch status``
    shows the tokens used, and a budget set later counts them): one script each to reserve and
    to settle, one ``EVALSHA`` round trip each, not several commands."""
    name = f"trips{os.getpid()}"
    n = 5
    async with (
        RedisJobQueue(redis_url, name=name) as queue,
        coredis.Redis.from_url(redis_url, decode_responses=True) as stats,
        open_redis_budget(queue.client, name=name, lease=600) as budget,  # no refresh in between
    ):
        await queue.delete()
        await (await budget.reserve(1)).release(1)  # the scripts are loaded, the connection open
        await stats.ping()  # its connection open too
        async with trio.open_nursery() as nursery:
            started = trio.Event()
            seen: list[tuple[str, str]] = []

            async def monitor() -> None:
                seen.extend(await _monitor_until(redis_url, started, name))

            nursery.start_soon(monitor)
            await started.wait()
            for _ in range(n):
                await (await budget.reserve(10)).release(7)
            await stats.echo(name)
        counts = await queue.counts()
    assert Counter(command for who, command in seen if who == "client") == {"evalsha": 2 * n}
    assert Counter(command for who, command in seen if who == "lua")["hincrby"] > 0  # inside
    assert (counts.budget, counts.spent) == (None, 1 + 7 * n)
