"""A batch's jobs on a Redis stream, shared by workers on any number of machines.

Keys of queue ``NAME`` (prefix ``llmpipe:batch:``; the ``{NAME}`` hash tag keeps them in one
cluster slot):

* ``…{NAME}:jobs``: a stream, one entry per job (field ``job``: :func:`job_to_json`), read by
  the consumer group ``workers`` (``XREADGROUP``); an entry stays *pending* with the worker that
  read it until that worker acknowledges it (``XACK``) with the job's outcome.
* ``…{NAME}:submitted``: a hash of the ids submitted, so that submitting the same file again
  adds nothing twice.
* ``…{NAME}:results``: a hash ``custom_id`` -> the job's ``results.jsonl`` record (OpenAI Batch
  output format, the document's text included), written once (``HSETNX``) in the same script
  that acknowledges the entry: a job is done exactly when its record is here.
* ``…{NAME}:errors``: a hash ``custom_id`` -> the last failure of a job not (yet) done.
* ``…{NAME}:dead``: the dead-letter stream: jobs delivered ``max_deliveries`` times without
  succeeding, or failed for a reason retrying cannot fix, with their last error.
  :meth:`RedisJobQueue.requeue` puts them back on the jobs stream as new entries (their
  delivery count starts again).
* ``…{NAME}:stats``: a hash of counters (``requeued``).
* ``…{NAME}:budget`` and ``…{NAME}:budget:running``: the batch's token budget
  (``--max-tokens-total``, set by :meth:`RedisJobQueue.set_budget`), shared by every worker
  (:class:`RedisTokenBudget`).

Every change of state is one Lua script (atomic, one round trip): submit a page of jobs,
record a job done (result + ``XACK``), record a failure (error, then dead-letter + ``XACK``
or leave the entry pending for another delivery), claim the entries of a worker that stopped
refreshing them (``XAUTOCLAIM``, dead-lettering those delivered too often already).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
from collections.abc import AsyncIterator, Iterable, Iterator
from types import TracebackType
from typing import Any, Final, Literal

import attrs

from pipeline import ConfigError, LLMPipeError
from pipeline.packaging import missing_extra

try:
    import coredis
    import coredis.exceptions
except ImportError as exc:  # the 'redis' extra is not installed
    raise missing_extra("redis", "batch workers on Redis (--redis)", exc) from exc

from ._jobs import InvalidJob, Job, job_from_json, job_to_json

__all__ = ["GROUP", "Delivery", "QueueCounts", "QueueError", "RedisJobQueue", "default_consumer"]

GROUP: Final = "workers"
SUBMIT_PAGE: Final = 256
"""Jobs per submit script."""


class QueueError(LLMPipeError):
    """Redis refused or failed a queue operation (the coredis exception is the cause)."""

    kind = "queue"


def default_consumer() -> str:
    """A worker's default name in the consumer group: ``HOST-PID``."""
    return f"{socket.gethostname()}-{os.getpid()}"


# KEYS jobs; ARGV group -> 1 if created, 0 if it existed.
_CREATE: Final = """
local ok = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if ok then return 1 end
return 0
"""

# KEYS jobs, submitted; ARGV custom_id, json, custom_id, json, ... -> how many were new.
_SUBMIT: Final = """
local added = 0
for i = 1, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], 1) == 1 then
    redis.call('XADD', KEYS[1], '*', 'job', ARGV[i + 1])
    added = added + 1
  end
end
return added
"""

# KEYS jobs, results, errors; ARGV group, entry id, custom_id, record -> 1 if recorded now.
_DONE: Final = """
local new = redis.call('HSETNX', KEYS[2], ARGV[3], ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[3])
return new
"""

# KEYS jobs, results, errors, dead; ARGV group, entry id, custom_id, error record,
# max deliveries, '1' to dead-letter whatever the count, consumer
# -> 'done' | 'dead' | 'retry' | 'lost'.
_FAIL: Final = """
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  return 'done'
end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if not p[1] then return 'lost' end
if p[1][2] ~= ARGV[7] then return 'lost' end
local n = tonumber(p[1][4])
if ARGV[6] == '1' or n >= tonumber(ARGV[5]) then
  local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
  local job = ''
  if e[1] then job = e[1][2][2] end
  redis.call('XADD', KEYS[4], '*', 'custom_id', ARGV[3], 'job', job, 'error', ARGV[4],
             'deliveries', n)
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  return 'dead'
end
return 'retry'
"""

# KEYS jobs, errors, dead; ARGV group, consumer, min idle ms, count, max deliveries,
# error record template (custom_id filled in by the client) -> {id, job, deliveries, ...}
# of the entries claimed; those delivered more than max deliveries already are dead-lettered.
_CLAIM: Final = """
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', ARGV[4])
local out = {}
for _, e in ipairs(r[2]) do
  local id, job = e[1], e[2][2]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  local n = 0
  if p[1] then n = tonumber(p[1][4]) end
  if n > tonumber(ARGV[5]) then
    local ok, obj = pcall(cjson.decode, job)
    local cid = ''
    if ok and type(obj) == 'table' and type(obj['custom_id']) == 'string' then
      cid = obj['custom_id']
    end
    local err = string.gsub(ARGV[6], '__CUSTOM_ID__', cid)
    local last = redis.call('HGET', KEYS[2], cid)
    if last then err = last end
    redis.call('XADD', KEYS[3], '*', 'custom_id', cid, 'job', job, 'error', err,
               'deliveries', n)
    redis.call('XACK', KEYS[1], ARGV[1], id)
  else
    table.insert(out, id)
    table.insert(out, job)
    table.insert(out, n)
  end
end
return out
"""


# KEYS jobs, results, errors, dead, stats; ARGV start (exclusive after the first page: '(ID'),
# count -> {requeued, entries read, last id read}. A dead letter whose job is done meanwhile
# is dropped; one that holds no job (an invalid entry) stays.
_REQUEUE: Final = """
local entries = redis.call('XRANGE', KEYS[4], ARGV[1], '+', 'COUNT', ARGV[2])
local n = 0
local last = ''
for _, e in ipairs(entries) do
  last = e[1]
  local cid, job = '', ''
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 'custom_id' then cid = f[i + 1] elseif f[i] == 'job' then job = f[i + 1] end
  end
  if cid ~= '' and job ~= '' then
    if redis.call('HEXISTS', KEYS[2], cid) == 0 then
      redis.call('XADD', KEYS[1], '*', 'job', job)
      redis.call('HDEL', KEYS[3], cid)
      n = n + 1
    end
    redis.call('XDEL', KEYS[4], e[1])
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[5], 'requeued', n) end
return {n, #entries, last}
"""


@attrs.frozen
class Delivery:
    """A queue entry handed to a worker: the entry's id, its job (or why it is not one) and
    how many times it was delivered (1 for a first read)."""

    id: str
    job: Job | InvalidJob
    deliveries: int = 1


@attrs.frozen
class QueueCounts:
    """What ``llmpipe batch status`` shows. ``submitted``: jobs ever put on the queue;
    ``done``: recorded done; ``dead``: in the dead-letter stream; ``pending``: read by a
    worker and not yet acknowledged; ``waiting``: not read yet; ``failing``: jobs whose last
    delivery failed and that are neither done nor dead; ``consumers``: workers the group has
    seen; ``requeued``: dead letters put back on the queue (``llmpipe batch requeue``), in
    all; ``budget``: the token budget (``None``: none) and ``spent``: the tokens the workers'
    requests used (counted with or without a budget)."""

    submitted: int
    done: int
    dead: int
    pending: int
    waiting: int
    failing: int
    consumers: int
    requeued: int = 0
    budget: int | None = None
    spent: int = 0

    @property
    def finished(self) -> bool:
        """Nothing is waiting or pending: every job submitted is done or dead."""
        return self.pending == 0 and self.waiting == 0


def _str(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def _translate() -> Iterator[None]:
    try:
        yield
    except (coredis.exceptions.RedisError, TimeoutError) as exc:
        raise QueueError(f"redis: {type(exc).__name__}: {exc}") from exc


class RedisJobQueue:
    """The queue ``name`` on a Redis server (see the module docstring for the keys).

    Enter it before use (``async with RedisJobQueue(url) as queue:``): coredis runs its
    connections in a task group. Given a URL it owns its client and closes it on exit; given a
    ``coredis.Redis`` client (``decode_responses=True``), the caller enters and closes it.
    Redis errors are raised as :class:`QueueError`.
    """

    def __init__(
        self,
        url_or_client: str | coredis.Redis[Any],
        *,
        name: str = "default",
        prefix: str = "llmpipe:batch:",
    ) -> None:
        if not name or any(c in name for c in "{}"):
            raise ConfigError(f"queue name {name!r}: non-empty, without braces")
        if isinstance(url_or_client, str):
            try:
                self._client: coredis.Redis[Any] = coredis.Redis.from_url(
                    url_or_client, decode_responses=True
                )
            except ValueError as exc:
                raise ConfigError(f"redis url: {exc}") from exc
            self._owns_client = True
        else:
            self._client = url_or_client
            self._owns_client = False
        self.name = name
        base = f"{prefix}{{{name}}}"
        self.jobs_key = f"{base}:jobs"
        self.submitted_key = f"{base}:submitted"
        self.results_key = f"{base}:results"
        self.errors_key = f"{base}:errors"
        self.dead_key = f"{base}:dead"
        self.stats_key = f"{base}:stats"
        self.budget_key = f"{base}:budget"
        self.budget_running_key = f"{base}:budget:running"
        self._create = self._client.register_script(_CREATE)
        self._submit = self._client.register_script(_SUBMIT)
        self._done = self._client.register_script(_DONE)
        self._fail = self._client.register_script(_FAIL)
        self._claim = self._client.register_script(_CLAIM)
        self._requeue = self._client.register_script(_REQUEUE)
        self._entered = False

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key of the queue (the limiter's are separate)."""
        return (
            self.jobs_key,
            self.submitted_key,
            self.results_key,
            self.errors_key,
            self.dead_key,
            self.stats_key,
            self.budget_key,
            self.budget_running_key,
        )

    @property
    def client(self) -> coredis.Redis[Any]:
        """The coredis client (a :class:`RedisLimiter` may share it)."""
        return self._client

    async def __aenter__(self) -> RedisJobQueue:
        if self._owns_client:
            with _translate():
                await self._client.__aenter__()
            self._entered = True
        await self._create_group()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._entered:
            self._entered = False
            await self._client.__aexit__(exc_type, exc, tb)

    async def _create_group(self) -> None:
        # One script, so that an existing group is not an error reply (coredis leaves its
        # connection task group in a bad state after some error replies under trio).
        with _translate():
            await self._create(keys=[self.jobs_key], args=[GROUP])

    # -- submitter ---------------------------------------------------------------------------

    async def submit(self, jobs: Iterable[Job]) -> int:
        """Put ``jobs`` on the queue (pages of :data:`SUBMIT_PAGE`, each one script); a job
        whose id was submitted before is not added again. Returns how many were added."""
        added = 0
        page: list[str] = []
        for job in jobs:
            page += [job.custom_id, job_to_json(job)]
            if len(page) >= 2 * SUBMIT_PAGE:
                added += await self._submit_page(page)
                page = []
        if page:
            added += await self._submit_page(page)
        return added

    async def _submit_page(self, page: list[str]) -> int:
        with _translate():
            added: object = await self._submit(keys=[self.jobs_key, self.submitted_key], args=page)
        return int(_str(added))

    async def set_budget(self, total: int | None) -> None:
        """Set the batch's token budget (``None``: remove it), shared by every worker: no
        request is sent that could take the tokens the workers' requests used (so far, and in
        earlier runs on this queue) over ``total``."""
        with _translate():
            if total is None:
                await self._client.hdel(self.budget_key, ["total"])
            else:
                await self._client.hset(self.budget_key, {"total": total})

    async def requeue(self, page: int = 256) -> int:
        """Put every dead-lettered job back on the jobs stream as a new entry (its delivery
        count starts again, its last error is forgotten) and take it off the dead-letter
        stream, one script per page; a job recorded done meanwhile is only taken off. Returns
        how many were put back (counted in :attr:`QueueCounts.requeued`)."""
        start, requeued = "-", 0
        while True:
            with _translate():
                reply: Any = await self._requeue(
                    keys=[
                        self.jobs_key,
                        self.results_key,
                        self.errors_key,
                        self.dead_key,
                        self.stats_key,
                    ],
                    args=[start, page],
                )
            added, read, last = int(_str(reply[0])), int(_str(reply[1])), _str(reply[2])
            requeued += added
            if read < page:
                return requeued
            start = "(" + last

    async def counts(self) -> QueueCounts:
        with _translate():
            submitted = await self._client.hlen(self.submitted_key)
            entries = await self._client.xlen(self.jobs_key)
            done = await self._client.hlen(self.results_key)
            dead = await self._client.xlen(self.dead_key)
            failing = await self._client.hlen(self.errors_key)
            groups = await self._client.xinfo_groups(self.jobs_key)
            requeued = await self._client.hget(self.stats_key, "requeued")
            budget = await self._client.hmget(self.budget_key, ["total", "spent"])
        group = next((g for g in groups if _str(g.get("name")) == GROUP), {})
        lag = group.get("lag")
        pending = int(_str(group.get("pending", 0)))
        read = group.get("entries-read")
        if lag is None:  # Redis could not tell (entries deleted): count from what was read
            lag = entries - int(_str(read or 0))
        total, spent = budget
        return QueueCounts(
            submitted=submitted,
            done=done,
            dead=dead,
            pending=pending,
            waiting=max(0, int(_str(lag))),
            failing=max(0, failing - dead),
            consumers=int(_str(group.get("consumers", 0))),
            requeued=int(_str(requeued or 0)),
            budget=None if total is None else int(_str(total)),
            spent=int(_str(spent or 0)),
        )

    async def results(self, page: int = 256) -> AsyncIterator[dict[str, Any]]:
        """Every result record (``results.jsonl`` objects), in no particular order, read in
        pages (``HSCAN``)."""
        cursor = 0
        while True:
            with _translate():
                cursor, found = await self._client.hscan(self.results_key, cursor, count=page)
            assert isinstance(found, dict)
            for value in found.values():
                yield json.loads(_str(value))
            if cursor == 0:
                return

    async def dead_letters(self, page: int = 256) -> AsyncIterator[dict[str, Any]]:
        """Every dead-lettered job's error record (``errors.jsonl`` objects), oldest first."""
        start = "-"
        while True:
            with _translate():
                entries = await self._client.xrange(self.dead_key, start, "+", count=page)
            for entry in entries:
                yield json.loads(_str(entry.field_values["error"]))
            if len(entries) < page:
                return
            start = "(" + _str(entries[-1].identifier)

    # -- workers -----------------------------------------------------------------------------

    async def read(self, consumer: str, *, count: int = 1, block: float = 1.0) -> list[Delivery]:
        """New entries for ``consumer`` (``XREADGROUP``), waiting up to ``block`` seconds
        (real time) for one."""
        with _translate():
            reply = await self._client.xreadgroup(
                GROUP,
                consumer,
                {self.jobs_key: ">"},
                count=count,
                block=max(1, math.ceil(block * 1000)),
            )
        if not reply:
            return []
        entries = next(iter(reply.values()))
        return [_delivery(_str(e.identifier), _str(e.field_values["job"]), 1) for e in entries]

    async def claim(
        self, consumer: str, *, min_idle: float, max_deliveries: int, count: int = 8
    ) -> list[Delivery]:
        """Entries no worker refreshed for ``min_idle`` seconds (their worker died), now
        ``consumer``'s (``XAUTOCLAIM``); one already delivered more than ``max_deliveries``
        times goes to the dead-letter stream instead, with its last error."""
        template = json.dumps(
            {
                "id": "batch_req_dead",
                "custom_id": "__CUSTOM_ID__",
                "response": None,
                "error": {
                    "code": "delivery_limit",
                    "message": f"delivered more than {max_deliveries} times without an outcome "
                    "(did its workers die?)",
                },
            }
        )
        with _translate():
            reply: Any = await self._claim(
                keys=[self.jobs_key, self.errors_key, self.dead_key],
                args=[
                    GROUP,
                    consumer,
                    max(0, math.ceil(min_idle * 1000)),
                    count,
                    max_deliveries,
                    template,
                ],
            )
        items = list(reply or [])
        return [
            _delivery(_str(items[i]), _str(items[i + 1]), int(_str(items[i + 2])))
            for i in range(0, len(items), 3)
        ]

    async def keep(self, consumer: str, ids: Iterable[str]) -> None:
        """Tell the group ``consumer`` is still working on ``ids`` (their idle time restarts,
        so no other worker claims them; their delivery counts do not change)."""
        ids = list(ids)
        if ids:
            with _translate():
                await self._client.xclaim(self.jobs_key, GROUP, consumer, 0, ids, justid=True)

    async def done(self, entry_id: str, job: Job, record: dict[str, Any]) -> bool:
        """Record the job done with its result ``record`` and acknowledge its entry, in one
        script. Returns ``False`` if it had been recorded done already (the first record
        stays)."""
        with _translate():
            new: object = await self._done(
                keys=[self.jobs_key, self.results_key, self.errors_key],
                args=[GROUP, entry_id, job.custom_id, json.dumps(record, ensure_ascii=False)],
            )
        return int(_str(new)) == 1

    async def fail(
        self,
        entry_id: str,
        custom_id: str,
        record: dict[str, Any],
        *,
        max_deliveries: int,
        final: bool = False,
        consumer: str = "",
    ) -> Literal["done", "dead", "retry", "lost"]:
        """Record a failed delivery (``record``: its ``errors.jsonl`` object). When the entry
        was delivered ``max_deliveries`` times, or ``final`` (retrying cannot help), it moves
        to the dead-letter stream and is acknowledged (``"dead"``); else it stays pending, and
        a worker claims it again after the idle time (``"retry"``). ``"done"``: the job was
        recorded done meanwhile (by another worker); ``"lost"``: the entry is not
        ``consumer``'s any more (another worker claimed it: that one decides)."""
        with _translate():
            status: object = await self._fail(
                keys=[self.jobs_key, self.results_key, self.errors_key, self.dead_key],
                args=[
                    GROUP,
                    entry_id,
                    custom_id,
                    json.dumps(record, ensure_ascii=False),
                    max_deliveries,
                    "1" if final else "0",
                    consumer,
                ],
            )
        result = _str(status)
        assert result in ("done", "dead", "retry", "lost"), result
        return result  # type: ignore[return-value]

    async def delete(self) -> None:
        """Remove every key of the queue."""
        with _translate():
            await self._client.delete(list(self.keys))
        await self._create_group()


def _delivery(entry_id: str, text: str, deliveries: int) -> Delivery:
    try:
        job: Job | InvalidJob = job_from_json(text)
    except InvalidJob as exc:
        job = exc
    return Delivery(entry_id, job, deliveries)
