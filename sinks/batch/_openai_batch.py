"""The same jobs through a provider's Batch API (``llmpipe batch --via openai-batch``).

Half the price and hours of latency: the jobs not yet done in the ledger are written in the
Batch API request format (``/v1/chat/completions``), uploaded with ``client.files.create``,
submitted with ``client.batches.create``, and ``client.batches.retrieve`` is polled until the
batch ends; then the output and error files (``client.files.content``) are read and each job is
recorded in the ledger as the runner would record it (document, ``results.jsonl``,
``errors.jsonl``). A job the batch did not answer is recorded failed with the batch's status.
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
from ._outputs import JobFailure, JobOutcome, Ledger

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


@attrs.frozen
class ProviderBatchSubmitted:
    """The jobs file was uploaded (``file_id``) and the batch created (``batch_id``)."""

    batch_id: str
    file_id: str
    requests: int


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
    not a job)."""
    pending: dict[str, Job] = {}
    lines: list[bytes] = []
    skipped = invalid = 0
    async for item in jobs:
        if isinstance(item, InvalidLine):
            invalid += 1
            report(item)
        elif ledger.is_done(item.custom_id):
            skipped += 1
        else:
            pending[item.custom_id] = item
            request = batch_request(item, model=model, max_tokens=max_tokens)
            lines.append(json.dumps(request, ensure_ascii=False).encode() + b"\n")
    if not pending:
        ended = ProviderBatchEnded(None, None, 0, 0, skipped, invalid)
        report(ended)
        return ended
    uploaded = await client.files.create(
        file=("llmpipe-batch.jsonl", b"".join(lines), "application/jsonl"), purpose="batch"
    )
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint=BATCH_ENDPOINT, completion_window="24h"
    )
    report(ProviderBatchSubmitted(batch.id, uploaded.id, len(pending)))
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
    ended = ProviderBatchEnded(batch.id, batch.status, done, failed, skipped, invalid)
    report(ended)
    return ended
