"""A :class:`StreamStore` on Redis Streams, through ``coredis`` (native under trio)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, Final

import attrs
import trio

from .. import ConfigError, Event, event_from_json, event_to_json, is_terminal
from ..packaging import missing_extra

try:
    import coredis
    import coredis.exceptions
except ImportError as exc:  # the 'redis' extra is not installed
    raise missing_extra("redis", "the Redis store (redis:// URLs)", exc) from exc
from ._base import (
    DEFAULT_WAIT_LIMIT,
    StoreError,
    StoreFull,
    StoreUnavailable,
    StreamEnded,
    StreamInfo,
    StreamNotFound,
)
from ._memory import check_batch, check_positive, check_read_args

__all__ = ["RedisStore"]

# KEYS[1] info hash, KEYS[2] events stream, KEYS[3] owner lease; ARGV[1] created_at,
# ARGV[2] idle ms (0: none), ARGV[3] lease ms (0: no owner lease).
_CREATE: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'created_at', ARGV[1], 'last_seq', 0, 'events', 0,
           'counted', 0, 'ended', 0, 'cancel_requested', 0)
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if tonumber(ARGV[3]) > 0 then
  redis.call('HSET', KEYS[1], 'lease', 1)
  redis.call('SET', KEYS[3], 1, 'PX', ARGV[3])
end
return 1
"""

# KEYS[1] info hash, KEYS[2] owner lease; ARGV[1] lease ms. 0 if the stream does not exist.
_RENEW: Final = """
local ended = redis.call('HGET', KEYS[1], 'ended')
if not ended then return 0 end
if ended == '0' then redis.call('SET', KEYS[2], 1, 'PX', ARGV[1]) end
return 1
"""

# KEYS[1] info hash, KEYS[2] owner lease: the hash (flat) and whether the lease is alive.
_INFO: Final = """
return {redis.call('HGETALL', KEYS[1]), redis.call('EXISTS', KEYS[2])}
"""

# KEYS[1] info hash, KEYS[2] events stream, KEYS[3] owner lease.
# ARGV[1] the last_seq the caller saw, ARGV[2] the terminal event's JSON (seq = ARGV[1] + 1),
# ARGV[3] ttl after end (ms), ARGV[4] now. 1: ended it; 0: not orphaned; -1: no such stream;
# -2: something was appended since the caller looked (look again).
_END_IF_ORPHANED: Final = """
local h = redis.call('HMGET', KEYS[1], 'last_seq', 'ended', 'events', 'lease')
if not h[1] then return -1 end
if h[2] == '1' or h[4] ~= '1' or redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if h[1] ~= ARGV[1] then return -2 end
local seq = tonumber(h[1]) + 1
redis.call('XADD', KEYS[2], seq .. '-0', 'e', ARGV[2])
redis.call('HSET', KEYS[1], 'last_seq', seq, 'events', tonumber(h[3]) + 1, 'ended', 1,
           'ended_at', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS[1] info hash, KEYS[2] events stream.
# ARGV[1] max counted events, ARGV[2] ttl after end (ms), ARGV[3] idle ms (0: none),
# ARGV[4] now (wall clock), ARGV[5] '1' if the batch ends with a terminal event,
# ARGV[6..] seq, json, seq, json, ... (seq increasing: checked by the client).
# Everything is checked before the first write, so a refused batch leaves no trace.
_APPEND: Final = """
local h = redis.call('HMGET', KEYS[1], 'last_seq', 'ended', 'events', 'counted')
if not h[1] then return {'notfound'} end
if h[2] == '1' then return {'ended'} end
if tonumber(ARGV[6]) <= tonumber(h[1]) then return {'order', h[1]} end
local n = (#ARGV - 5) / 2
local counted = tonumber(h[4]) + n
if ARGV[5] == '1' then counted = counted - 1 end
if counted > tonumber(ARGV[1]) then return {'full', h[4]} end
for i = 6, #ARGV, 2 do
  redis.call('XADD', KEYS[2], ARGV[i] .. '-0', 'e', ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'last_seq', ARGV[#ARGV - 1], 'events', tonumber(h[3]) + n,
           'counted', counted)
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], 'ended', 1, 'ended_at', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
elseif tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return {'ok'}
"""

# KEYS[1] info hash; ARGV[1] field, ARGV[2] value. Never creates a partial hash.
_HSET_IF_EXISTS: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def _str(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


class RedisStore:
    """Streams in Redis, shared by every process that uses the same Redis and ``prefix``.

    Key layout for stream ``ID`` (the ``{ID}`` hash tag keeps both keys in one cluster slot):

    * ``<prefix>{ID}:info``: a hash: ``created_at``, ``last_seq``, ``events`` (stored events),
      ``counted`` (those counted against the budget), ``ended``/``ended_at``,
      ``cancel_requested``, ``last_reader_at``. Times are UNIX seconds.
    * ``<prefix>{ID}:events``: a Redis stream, one entry per event, with the explicit entry id
      ``<seq>-0`` and one field ``e`` holding the event's JSON (:func:`pipeline.event_to_json`).
      Replay after ``N`` is ``XRANGE key N+1-0 + COUNT limit``; following is
      ``XREAD BLOCK <ms> COUNT limit STREAMS key N-0``.
    * ``<prefix>{ID}:owner``: the owner lease of a stream created with ``lease=`` (the hash then
      has ``lease`` = 1): a key with ``PX`` = the lease, set again by ``renew_lease``. Redis
      expires it on its own clock, and an AOF restart keeps its absolute expiry, so a stream
      whose owner died (or lost Redis for longer than the lease) is seen orphaned by everyone.

    Budget: at most ``max_events_per_stream`` events per stream, plus its terminal event (so a
    stream can always be ended). Nothing is ever trimmed: an ``append`` that would pass the
    budget raises :class:`StoreFull` and stores nothing of its batch (``XADD MAXLEN ~`` would
    drop events silently, which resume cannot tolerate). Memory is bounded by Redis itself
    (``maxmemory``; use ``noeviction`` so Redis refuses writes rather than dropping streams).

    Lifetime: when the terminal event is appended both keys get ``PEXPIRE ttl_after_end``.
    ``max_idle`` (``None``: never) also sets an expiry on create and on every append, so the keys
    of a stream whose writer died disappear ``max_idle`` seconds after its last append.

    Atomicity: ``create`` (fails if the id exists), ``append`` (checks existence, end, order and
    budget, then all its ``XADD`` and the info update), ``touch`` and ``request_cancel`` are
    each one Lua script: one round trip per batch, and no partial state is ever visible to
    another process.

    Waiting: ``wait`` holds one pooled connection in ``XREAD BLOCK`` for up to ``timeout``; the
    terminal event is itself an entry, so the end wakes every reader. A cancel request does not
    wake them (readers see it via :meth:`info` at their next timeout). Size the pool
    (``max_connections``, default 64 in coredis) for the readers you expect per process.
    Cancelling a ``wait`` is safe: coredis drops that connection.

    Lifecycle: the store must be entered (``async with RedisStore(url) as store:``) because
    coredis runs its connections in a task group. When given a URL, the store owns its client
    (``decode_responses=True``) and :meth:`aclose` (or leaving the block) closes its pool; when
    given a ``coredis.Redis`` client, the caller enters and closes that client. Redis errors are
    raised as :class:`StoreError` (with the coredis exception as ``__cause__``).
    """

    def __init__(
        self,
        url_or_client: str | coredis.Redis[Any],
        *,
        prefix: str = "llmpipe:",
        max_events_per_stream: int = 100_000,
        ttl_after_end: float = 3600.0,
        max_idle: float | None = 24 * 3600.0,
        max_connections: int | None = None,
    ) -> None:
        if isinstance(max_events_per_stream, bool) or not isinstance(max_events_per_stream, int):
            raise TypeError(
                f"max_events_per_stream: expected an int, got {max_events_per_stream!r}"
            )
        if max_events_per_stream < 1:
            raise ConfigError(f"max_events_per_stream must be >= 1, got {max_events_per_stream}")
        check_positive("ttl_after_end", ttl_after_end)
        if max_idle is not None:
            check_positive("max_idle", max_idle)
        if isinstance(url_or_client, str):
            kwargs: dict[str, Any] = {}
            if max_connections is not None:
                kwargs["max_connections"] = max_connections
            try:
                self._client: coredis.Redis[Any] = coredis.Redis.from_url(
                    url_or_client, decode_responses=True, **kwargs
                )
            except ValueError as exc:
                raise ConfigError(f"redis url: {exc}") from exc
            self._owns_client = True
        else:
            if max_connections is not None:
                raise ConfigError("max_connections: configure the client you pass instead")
            self._client = url_or_client
            self._owns_client = False
        self.prefix = prefix
        self.max_events_per_stream = max_events_per_stream
        self.ttl_after_end = float(ttl_after_end)
        self.max_idle = None if max_idle is None else float(max_idle)
        self._ttl_ms = max(1, math.ceil(self.ttl_after_end * 1000))
        self._idle_ms = 0 if self.max_idle is None else max(1, math.ceil(self.max_idle * 1000))
        self._create = self._client.register_script(_CREATE)
        self._append = self._client.register_script(_APPEND)
        self._hset_if_exists = self._client.register_script(_HSET_IF_EXISTS)
        self._renew = self._client.register_script(_RENEW)
        self._info = self._client.register_script(_INFO)
        self._end_if_orphaned = self._client.register_script(_END_IF_ORPHANED)
        self._entered_by: trio.lowlevel.Task | None = None
        self._closed = False

    @property
    def client(self) -> coredis.Redis[Any]:
        """The coredis client (for health checks and metrics)."""
        return self._client

    def keys(self, stream_id: str) -> tuple[str, str]:
        """The ``(info, events)`` keys of ``stream_id``."""
        base = f"{self.prefix}{{{stream_id}}}"
        return f"{base}:info", f"{base}:events"

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> RedisStore:
        if self._closed:
            raise trio.ClosedResourceError("the store was closed")
        if self._owns_client:
            if self._entered_by is not None:
                raise RuntimeError("a RedisStore can be entered once")
            with _translate():
                await self._client.__aenter__()
            self._entered_by = trio.lowlevel.current_task()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Refuse further calls; close the owned connection pool. Idempotent.

        coredis's pool must be closed by the task that entered it: called from another task,
        this only marks the store closed and the pool is closed when the ``async with`` block
        that entered it ends.
        """
        await self._close(None, None, None)

    async def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        entered_by = self._entered_by
        if entered_by is not None and entered_by is trio.lowlevel.current_task():
            self._entered_by = None
            await self._client.__aexit__(exc_type, exc, tb)
        else:
            await trio.lowlevel.checkpoint()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the store was closed")
        if self._owns_client and self._entered_by is None:
            raise RuntimeError(
                "RedisStore is not entered: use `async with RedisStore(url) as store:`"
            )

    # -- the StreamStore protocol ------------------------------------------------------------

    def _owner_key(self, stream_id: str) -> str:
        return f"{self.prefix}{{{stream_id}}}:owner"

    async def create(self, stream_id: str, *, lease: float | None = None) -> None:
        if lease is not None:
            check_positive("lease", lease)
        self._check_open()
        keys = [*self.keys(stream_id), self._owner_key(stream_id)]
        with _translate():
            created: object = await self._create(
                keys=keys, args=[repr(time.time()), self._idle_ms, _ms(lease)]
            )
        if not created:
            raise ValueError(f"stream {stream_id!r} already exists")

    async def renew_lease(self, stream_id: str, lease: float) -> None:
        check_positive("lease", lease)
        self._check_open()
        keys = [self.keys(stream_id)[0], self._owner_key(stream_id)]
        with _translate():
            found: object = await self._renew(keys=keys, args=[_ms(lease)])
        if not found:
            raise _not_found(stream_id)

    async def end_if_orphaned(self, stream_id: str, event: Event) -> bool:
        if not is_terminal(event):
            raise ValueError(f"end_if_orphaned needs a terminal event, got {event!r}")
        self._check_open()
        keys = [*self.keys(stream_id), self._owner_key(stream_id)]
        while True:  # -2: an append came between info and the script; the next look decides
            info = await self.info(stream_id)
            if not info.orphaned:
                return False
            ev = attrs.evolve(event, seq=info.last_seq + 1)
            args: list[str | int] = [
                info.last_seq,
                event_to_json(ev),
                self._ttl_ms,
                repr(time.time()),
            ]
            with _translate():
                done: object = await self._end_if_orphaned(keys=keys, args=args)
            if done == -1:
                raise _not_found(stream_id)
            if done != -2:
                return done == 1

    async def append(self, stream_id: str, events: Sequence[Event]) -> None:
        """Store ``events`` (one atomic batch, one round trip).

        Raises :class:`StreamNotFound`, :class:`StoreFull`, :class:`StreamEnded` if the stream has
        ended, ``ValueError`` if the ``seq`` do not increase or something follows a terminal
        event.
        """
        self._check_open()
        if not events:
            await self.info(stream_id)  # StreamNotFound, as for a batch
            return
        check_batch(stream_id, 0, events)
        terminal = is_terminal(events[-1])
        args: list[str | int] = [
            self.max_events_per_stream,
            self._ttl_ms,
            self._idle_ms,
            repr(time.time()),
            "1" if terminal else "0",
        ]
        for ev in events:
            args.append(ev.seq)
            args.append(event_to_json(ev))
        with _translate():
            reply: object = await self._append(keys=self.keys(stream_id), args=args)
        status = _str(reply[0]) if isinstance(reply, list) and reply else repr(reply)
        if status == "ok":
            return
        if status == "notfound":
            raise _not_found(stream_id)
        if status == "ended":
            raise StreamEnded(f"stream {stream_id!r} has ended; nothing may be appended")
        assert isinstance(reply, list)
        if status == "order":
            raise ValueError(
                f"stream {stream_id!r}: events must be stamped with increasing seq "
                f"(got seq {events[0].seq} after {_str(reply[1])})"
            )
        if status == "full":
            counted = len(events) - (1 if terminal else 0)
            raise StoreFull(
                f"stream {stream_id!r}: {_str(reply[1])} events stored, {counted} more would pass "
                f"max_events_per_stream={self.max_events_per_stream}"
            )
        raise StoreError(f"unexpected reply from the append script: {reply!r}")

    async def read(self, stream_id: str, after: int, limit: int) -> list[Event]:
        check_read_args(after, limit)
        self._check_open()
        info_key, events_key = self.keys(stream_id)
        with _translate():
            entries = await self._client.xrange(events_key, f"{after + 1}-0", "+", count=limit)
            if not entries and not await self._client.exists([info_key]):
                raise _not_found(stream_id)
        return [event_from_json(_str(e.field_values["e"])) for e in entries]

    async def wait(
        self,
        stream_id: str,
        after: int,
        timeout: float,  # noqa: ASYNC109 (a server-side XREAD BLOCK with Redis)
        limit: int = DEFAULT_WAIT_LIMIT,
    ) -> list[Event]:
        """Events after ``after`` as soon as there are any (see :class:`StreamStore`).

        ``timeout`` is in real seconds (it becomes ``XREAD BLOCK`` milliseconds, at least 1;
        ``math.inf`` blocks without limit; ``<= 0`` does not wait). Not driven by trio's
        ``MockClock``.
        """
        check_read_args(after, limit)
        self._check_open()
        info_key, events_key = self.keys(stream_id)
        with _translate():
            ended, last_seq = await self._client.hmget(info_key, ["ended", "last_seq"])
        if ended is None or last_seq is None:
            raise _not_found(stream_id)
        if _str(ended) == "1" or int(_str(last_seq)) > after or timeout <= 0:
            return await self.read(stream_id, after, limit)
        block = 0 if math.isinf(timeout) else max(1, math.ceil(timeout * 1000))
        with _translate():
            reply = await self._client.xread({events_key: f"{after}-0"}, count=limit, block=block)
        if not reply:
            return []
        entries = next(iter(reply.values()))
        return [event_from_json(_str(e.field_values["e"])) for e in entries]

    async def info(self, stream_id: str) -> StreamInfo:
        self._check_open()
        keys = [self.keys(stream_id)[0], self._owner_key(stream_id)]
        with _translate():
            reply: object = await self._info(keys=keys)
        if not isinstance(reply, list) or len(reply) != 2:
            raise StoreError(f"unexpected reply from the info script: {reply!r}")
        flat, owner_alive = reply
        if not flat:
            raise _not_found(stream_id)
        if isinstance(flat, dict):  # RESP3 maps
            h = {_str(k): _str(v) for k, v in flat.items()}
        else:
            h = {_str(k): _str(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
        reader = h.get("last_reader_at")
        return StreamInfo(
            stream_id=stream_id,
            created_at=float(h["created_at"]),
            last_seq=int(h["last_seq"]),
            ended=h["ended"] == "1",
            cancel_requested=h["cancel_requested"] == "1",
            last_reader_at=None if reader is None else float(reader),
            events=int(h["events"]),
            orphaned=h["ended"] != "1" and h.get("lease") == "1" and not owner_alive,
        )

    async def touch(self, stream_id: str) -> None:
        await self._set_field(stream_id, "last_reader_at", repr(time.time()))

    async def request_cancel(self, stream_id: str) -> None:
        """Set ``cancel_requested`` (idempotent); the owning process sees it via :meth:`info`."""
        await self._set_field(stream_id, "cancel_requested", "1")

    async def delete(self, stream_id: str) -> None:
        self._check_open()
        with _translate():
            await self._client.delete([*self.keys(stream_id), self._owner_key(stream_id)])

    def __repr__(self) -> str:
        return f"<RedisStore prefix={self.prefix!r} client={self._client!r}>"

    async def _set_field(self, stream_id: str, field: str, value: str) -> None:
        self._check_open()
        info_key, _ = self.keys(stream_id)
        with _translate():
            done: object = await self._hset_if_exists(keys=[info_key], args=[field, value])
        if not done:
            raise _not_found(stream_id)


def _ms(seconds: float | None) -> int:
    """Seconds as Redis milliseconds (at least 1); ``None`` -> 0."""
    return 0 if seconds is None else max(1, math.ceil(seconds * 1000))


def _not_found(stream_id: str) -> StreamNotFound:
    return StreamNotFound(f"no stream {stream_id!r} (never created, expired or deleted)")


@contextlib.contextmanager
def _translate() -> Iterator[None]:
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
    except coredis.exceptions.RedisError as exc:
        raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc


# Redis cannot be reached or did not answer (or is loading its AOF after a restart).
_UNAVAILABLE: Final = (
    coredis.exceptions.ConnectionError,
    coredis.exceptions.BusyLoadingError,
    TimeoutError,
    OSError,
    trio.BrokenResourceError,
)
