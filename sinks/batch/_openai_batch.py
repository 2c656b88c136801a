"""The same jobs through a provider's Batch API (``llmpipe batch --via openai-batch``).

Half the price and hours of latency: the jobs not yet done in the ledger are written in the
Batch API request format (``/v1/chat/completions``), uploaded with ``client.files.create``,
submitted with ``client.batches.create``, and ``client.batches.retrieve`` is polled until the
batch ends; then the output and error files (``client.files.content``) are read and each job is
recorded in the ledger as the runner would record it (document, ``results.jsonl``,
``errors.jsonl``). A job the batch did not answer is recorded failed with the batch's status.
The submitted batch is recorded in the output directory until its outcomes are, so running the
same command again while it is in progress polls it instead of submitting it twice: its input
file is recorded before the batch is created, and a record without a batch id (the run stopped
between the two) is resolved by listing the provider's batches for that file.
The client is the official SDK's ``openai.AsyncOpenAI`` (anyio: it runs under trio).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final, TypeAlias

import attrs
import trio

from pipeline import ConfigError

from ._jobs import InvalidLine, Job, JobSource
from ._outputs import BatchDirectory, JobFailure, JobOutcome, Ledger

__all__ = [
    "BATCH_ENDPOINT",
    "ProviderBatchEnded",
    "ProviderBatchEvent",
    "ProviderBatchPolled",
    "ProviderBatchSubmitted",
    "batch_request",
    "run_provider_batch",
]

BATCH_ENDPOINT: Final = "/v1/chat/completions"
_TERMINAL: Final = frozenset({"completed", "failed", "expired", "cancelled"})
_LIST_SLACK: Final = 3600
"""Seconds before its input file's upload a batch looked for by that file may have been
created (the provider's clocks may differ a little); older batches are not listed."""


@attrs.frozen
class ProviderBatchSubmitted:
    """The jobs file was uploaded (``file_id``) and the batch created (``batch_id``);
    ``resumed``: by an earlier run, whose record this run found (it polls that batch)."""

    batch_id: str
    file_id: str
    requests: int
    resumed: bool = False


@attrs.frozen
class ProviderBatchPolled:
    """One poll of the batch: its status and request counts so far."""

    batch_id: str
    status: str
    completed: int
    failed: int


@attrs.frozen
class ProviderBatchEnded:
    """Every job is recorded: ``status`` is the batch's (``None``: nothing was submitted,
    every job was done already)."""

    batch_id: str | None
    status: str | None
    done: int
    failed: int
    skipped: int
    invalid: int


ProviderBatchEvent: TypeAlias = (
    ProviderBatchSubmitted | ProviderBatchPolled | ProviderBatchEnded | InvalidLine
)


def batch_request(job: Job, *, model: str | None, max_tokens: int) -> dict[str, Any]:
    """The Batch API request line of ``job`` (``model``/``max_tokens``: the defaults of a
    job that gives none)."""
    body: dict[str, Any] = {
        "model": job.model or model,
        "messages": [dict(m) for m in job.messages],
        "max_tokens": job.max_tokens or max_tokens,
    }
    if body["model"] is None:
        raise ConfigError(f"job {job.custom_id!r} names no model: pass --model")
    if job.temperature is not None:
        body["temperature"] = job.temperature
    return {"custom_id": job.custom_id, "method": "POST", "url": BATCH_ENDPOINT, "body": body}


def _outcome(body: Any) -> JobOutcome:
    choice = body["choices"][0]
    usage = body.get("usage") or {}
    return JobOutcome(
        str(choice["message"].get("content") or ""),
        int(usage.get("prompt_tokens", 0)),
        int(usage.get("completion_tokens", 0)),
        model=str(body.get("model", "")),
        response_id=str(body.get("id", "")),
        finish_reason=choice.get("finish_reason"),
    )


def _failure(line: dict[str, Any]) -> JobFailure:
    response = line.get("response") or {}
    error = line.get("error") or (response.get("body") or {}).get("error") or {}
    status = response.get("status_code")
    message = error.get("message") if isinstance(error, dict) else str(error)
    return JobFailure(
        "status" if status is not None else "batch",
        str(message or f"HTTP {status}"),
        status if isinstance(status, int) else None,
        retryable=isinstance(status, int) and (status == 429 or status >= 500),
        attempts=1,
    )


async def _lines(client: Any, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    out = []
    for raw in content.text.splitlines():
        if raw.strip():
            obj = json.loads(raw)
            if isinstance(obj, dict):
                out.append(obj)
    return out


async def run_provider_batch(
    client: Any,
    jobs: JobSource,
    ledger: Ledger,
    *,
    model: str | None,
    max_tokens: int,
    poll_interval: float = 30.0,
    report: Callable[[ProviderBatchEvent], None] = lambda event: None,
) -> ProviderBatchEnded:
    """Run the jobs of ``jobs`` not done in ``ledger`` as one batch of ``client``'s Batch API
    (``client``: an ``openai.AsyncOpenAI``), polling every ``poll_interval`` seconds, and
    record each in ``ledger``. ``report`` is called with the progress (and each line that is
    not a job).

    With a :class:`BatchDirectory` ledger the submitted batch (its id, its input file's id and
    its jobs) is recorded in the directory (:data:`PROVIDER_BATCH_FILE`) until its outcomes are:
    a run stopped (Ctrl-C, ``kill -9``) while the batch is in progress is resumed by the next,
    which polls that batch instead of submitting another (then submits the jobs not in it).
    The uploaded input file is recorded before the batch is created: a run stopped before it
    recorded the batch's id finds that batch in the provider's list by its input file, and
    submits again only if there is none."""
    memo = ledger if isinstance(ledger, BatchDirectory) else None
    pending: dict[str, Job] = {}
    skipped = invalid = 0
    async for item in jobs:
        if isinstance(item, InvalidLine):
            invalid += 1
            report(item)
        elif ledger.is_done(item.custom_id):
            skipped += 1
        else:
            batch_request(item, model=model, max_tokens=max_tokens)  # no model: fail before
            pending[item.custom_id] = item
    done = failed = 0
    batch: Any = None
    saved = None if memo is None else await memo.provider_batch()
    if saved is not None:
        assert memo is not None
        batch = await _recorded_batch(client, saved)
        if batch is None:  # the provider does not know it (any more): submit again
            await memo.record_provider_batch(None)
        else:
            if saved.get("batch_id") != batch.id:  # found by its input file: record its id
                await memo.record_provider_batch({**saved, "batch_id": batch.id})
            ids = [i for i in saved.get("custom_ids", []) if i in pending]
            mine = {i: pending.pop(i) for i in ids}
            report(
                ProviderBatchSubmitted(batch.id, str(saved.get("input_file_id")), len(ids), True)
            )
            batch, d, f = await _finish(client, batch, mine, ledger, poll_interval, report)
            await memo.record_provider_batch(None)
            done, failed = done + d, failed + f
    if pending:
        lines = [
            json.dumps(
                batch_request(job, model=model, max_tokens=max_tokens), ensure_ascii=False
            ).encode()
            + b"\n"
            for job in pending.values()
        ]
        uploaded = await client.files.create(
            file=("llmpipe-batch.jsonl", b"".join(lines), "application/jsonl"), purpose="batch"
        )
        record: dict[str, Any] = {
            "input_file_id": uploaded.id,
            "file_created_at": uploaded.created_at,
            "custom_ids": [*pending],
        }
        if memo is not None:  # before the batch exists: a run killed after creating it finds it
            with trio.CancelScope(shield=True):
                await memo.record_provider_batch(record)
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint=BATCH_ENDPOINT, completion_window="24h"
        )
        if memo is not None:
            with trio.CancelScope(shield=True):  # submitted: recorded, whatever happens now
                await memo.record_provider_batch({**record, "batch_id": batch.id})
        report(ProviderBatchSubmitted(batch.id, uploaded.id, len(pending)))
        batch, d, f = await _finish(client, batch, pending, ledger, poll_interval, report)
        if memo is not None:
            await memo.record_provider_batch(None)
        done, failed = done + d, failed + f
    ended = ProviderBatchEnded(
        None if batch is None else batch.id,
        None if batch is None else batch.status,
        done,
        failed,
        skipped,
        invalid,
    )
    report(ended)
    return ended


async def _recorded_batch(client: Any, saved: dict[str, Any]) -> Any:
    """The recorded batch as the provider sees it now; ``None`` if it does not know it.

    A record without a batch id was written before the batch was created (the run stopped
    before it recorded the id, maybe before the batch existed): the batch is looked for in the
    provider's list of batches (``client.batches.list``, every page, newest first) by its input
    file, down to the batches created :data:`_LIST_SLACK` seconds before that file."""
    batch_id = saved.get("batch_id")
    if isinstance(batch_id, str):
        try:
            return await client.batches.retrieve(batch_id)
        except Exception as exc:
            if getattr(exc, "status_code", None) == 404:
                return None
            raise
    file_id = saved.get("input_file_id")
    if not isinstance(file_id, str):
        return None
    created = saved.get("file_created_at")
    oldest = created - _LIST_SLACK if isinstance(created, int) else None
    async for batch in client.batches.list(limit=100):
        if batch.input_file_id == file_id:
            return batch
        if oldest is not None and batch.created_at < oldest:
            break  # newest first: older ones cannot use a file uploaded later
    return None


async def _finish(
    client: Any,
    batch: Any,
    pending: dict[str, Job],
    ledger: Ledger,
    poll_interval: float,
    report: Callable[[ProviderBatchEvent], None],
) -> tuple[Any, int, int]:
    """Poll ``batch`` until it ends, then record the outcome of each job of ``pending``;
    returns the ended batch and how many were done and failed."""
    pending = dict(pending)
    while batch.status not in _TERMINAL:
        await trio.sleep(poll_interval)
        batch = await client.batches.retrieve(batch.id)
        counts = batch.request_counts
        report(
            ProviderBatchPolled(
                batch.id,
                batch.status,
                counts.completed if counts else 0,
                counts.failed if counts else 0,
            )
        )
    done = failed = 0
    for line in await _lines(client, batch.output_file_id) + await _lines(
        client, batch.error_file_id
    ):
        job = pending.pop(str(line.get("custom_id")), None)
        if job is None:
            continue
        response = line.get("response") or {}
        if response.get("status_code") == 200 and not line.get("error"):
            await ledger.done(job, _outcome(response["body"]))
            done += 1
        else:
            await ledger.failed(job, _failure(line))
            failed += 1
    for job in pending.values():
        message = f"the batch {batch.id} ended {batch.status} without answering this job"
        await ledger.failed(job, JobFailure("batch", message, None, retryable=True, attempts=1))
        failed += 1
    return batch, done, failed
