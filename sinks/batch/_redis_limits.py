"""A :class:`Limiter` shared through Redis by every worker of a batch, on any machine.

The same accounting as :class:`LocalLimiter`: a request counts against the requests and
tokens per minute from its admission until ``window`` seconds after it ended (its estimate
while it runs, the usage reported afterwards). Keys (``…{NAME}:`` as the queue's):

* ``…:limit:reqs``: a sorted set, one member per request counted, scored by the Redis time
  (ms) at which it stops counting: ``end + window`` once ended; while it runs,
  ``now + lease + window``, pushed forward every ``lease / 3`` s by the worker running it, so
  the requests of a worker that died stop counting ``lease + window`` after its last refresh
  and never before the provider's own window for them is over.
* ``…:limit:tokens``: a hash member -> tokens; ``…:limit:state``: ``total`` (the tokens
  counted), ``paused_until`` (ms), ``pauses``.

:meth:`RedisLimiter.acquire` is one Lua script (expire, check, count: atomic, one round trip);
when the request does not fit, the script says how long until it may, and the limiter sleeps
that long (at most ``poll`` s, since another worker's release may free room sooner) and tries
again. Times are the Redis server's clock (``TIME``), the same for every machine. Concurrency
is per worker (each process's own ``concurrency``).

:class:`RedisTokenBudget` is the batch's total token budget (``--max-tokens-total``) shared the
same way: ``…{NAME}:budget`` (a hash: ``total``, ``spent``, ``reserved``, ``r:ID`` -> the
tokens a running request reserved) and ``…{NAME}:budget:running`` (a sorted set of those
reservations by lease expiry), one script to reserve (checked before sending), one to settle.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, Protocol

import attrs
import trio

from pipeline import ConfigError, lone_exception_unwrapped
from pipeline.producers import CostLimitError

from ._limits import DEFAULT_WINDOW, BudgetExhausted, LimiterStatistics, Permit, budget_message
from ._queue import QueueError

try:
    import coredis
    import coredis.exceptions
except ImportError as exc:  # pragma: no cover - _queue raised first
    raise ImportError(exc) from exc

__all__ = ["RedisLimiter", "RedisTokenBudget", "open_redis_budget", "open_redis_limiter"]

_NOW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS reqs, tokens, state; ARGV id, tokens, rpm (0: none), tpm (0: none),
# running expiry (ms from now), keys' ttl (ms)
# -> {admitted 0|1, wait ms, requests counted, tokens counted, paused ms left}
_ACQUIRE: Final = (
    _NOW
    + """
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  local used = tonumber(redis.call('HGET', KEYS[2], id) or '0')
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HINCRBY', KEYS[3], 'total', 0 - used)  -- not -used: -0 is not an integer
end
local paused = tonumber(redis.call('HGET', KEYS[3], 'paused_until') or '0')
local wait = math.max(0, paused - now)
local count = redis.call('ZCARD', KEYS[1])
local total = tonumber(redis.call('HGET', KEYS[3], 'total') or '0')
local tokens, rpm, tpm = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if rpm > 0 and count + 1 > rpm then
  local need = count + 1 - rpm
  local e = redis.call('ZRANGE', KEYS[1], need - 1, need - 1, 'WITHSCORES')
  wait = math.max(wait, tonumber(e[2]) - now)
end
if tpm > 0 and total + tokens > tpm then
  local excess = total + tokens - tpm
  local freed = 0
  local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  local found = false
  for i = 1, #all, 2 do
    freed = freed + tonumber(redis.call('HGET', KEYS[2], all[i]) or '0')
    if freed >= excess then
      wait = math.max(wait, tonumber(all[i + 1]) - now)
      found = true
      break
    end
  end
  if not found then wait = math.max(wait, tonumber(ARGV[5])) end
end
if wait > 0 then return {0, wait, count, total, math.max(0, paused - now)} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[5]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], tokens)
redis.call('HINCRBY', KEYS[3], 'total', tokens)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[6]) end
return {1, 0, count + 1, total + tokens, 0}
"""
)

# KEYS reqs, tokens, state; ARGV id, used tokens (-1: keep the estimate), window ms, ttl ms
_RELEASE: Final = (
    _NOW
    + """
local old = redis.call('HGET', KEYS[2], ARGV[1])
local used = tonumber(ARGV[2])
if used < 0 then used = tonumber(old or '0') end
if old then
  redis.call('HINCRBY', KEYS[3], 'total', used - tonumber(old))
else
  redis.call('HINCRBY', KEYS[3], 'total', used)
end
redis.call('HSET', KEYS[2], ARGV[1], used)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
return 1
"""
)

# KEYS reqs; ARGV running expiry (ms from now), id, id, ...
_REFRESH: Final = (
    _NOW
    + """
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
end
return 1
"""
)

# KEYS state; ARGV pause ms, ttl ms -> 1 if the pause was extended
_PAUSE: Final = (
    _NOW
    + """
local till = now + tonumber(ARGV[1])
if till > tonumber(redis.call('HGET', KEYS[1], 'paused_until') or '0') then
  redis.call('HSET', KEYS[1], 'paused_until', till)
  redis.call('HINCRBY', KEYS[1], 'pauses', 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
)


# KEYS budget, running; ARGV id, tokens, lease ms -> {0 never | 1 wait | 2 reserved, spent,
# total (-1: none)}. Reservations whose lease ran out (their worker died) count as spent:
# their request may have been sent.
_RESERVE: Final = (
    _NOW
    + """
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  local t = tonumber(redis.call('HGET', KEYS[1], 'r:' .. id) or '0')
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[1], 'r:' .. id)
  redis.call('HINCRBY', KEYS[1], 'reserved', 0 - t)
  redis.call('HINCRBY', KEYS[1], 'spent', t)
end
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local tokens = tonumber(ARGV[2])
local total = redis.call('HGET', KEYS[1], 'total')
if total then
  total = tonumber(total)
  if spent + tokens > total then return {0, spent, total} end
  if spent + reserved + tokens > total then return {1, spent, total} end
else
  total = -1
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[1], 'r:' .. ARGV[1], tokens)
redis.call('HINCRBY', KEYS[1], 'reserved', tokens)
return {2, spent, total}
"""
)

# KEYS budget, running; ARGV id, used tokens (-1: the reservation) -> 1, or 0 if the lease
# had run out (the reservation was counted as spent then).
_SETTLE: Final = """
local t = redis.call('HGET', KEYS[1], 'r:' .. ARGV[1])
if not t then return 0 end
t = tonumber(t)
local used = tonumber(ARGV[2])
if used < 0 then used = t end
redis.call('HDEL', KEYS[1], 'r:' .. ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'reserved', 0 - t)
redis.call('HINCRBY', KEYS[1], 'spent', used)
return 1
"""


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


@attrs.define(eq=False)
class RedisLimiter:
    """A :class:`Limiter` whose requests- and tokens-per-minute are shared by every process
    using the same Redis and ``name`` (see the module docstring); ``concurrency`` is this
    process's. Made by :func:`open_redis_limiter` (it runs the lease refresher).

    ``lease``: how long a running request counts without a refresh (default: the window, at
    most 10 s). ``poll``: the longest sleep between two tries of a request that does not fit.
    Real time only (Redis's clock): not driven by trio's ``MockClock``.
    """

    client: coredis.Redis[Any]
    name: str = "default"
    concurrency: int | None = 16
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    window: float = DEFAULT_WINDOW
    lease: float | None = None
    poll: float = 0.25
    prefix: str = "llmpipe:batch:"
    _keys: list[str] = attrs.field(init=False)
    _slots: trio.Semaphore | None = attrs.field(init=False)
    _turn: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _running: dict[str, int] = attrs.field(factory=dict, init=False)
    _snapshot: tuple[int, int, float] = attrs.field(default=(0, 0, 0.0), init=False)
    _pauses: int = attrs.field(default=0, init=False)
    _scripts: dict[str, Any] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        for option in ("concurrency", "requests_per_minute", "tokens_per_minute"):
            value = getattr(self, option)
            if value is not None and value < 1:
                raise ConfigError(f"{option} must be >= 1 or None, got {value}")
        if not self.window > 0 or not self.poll > 0:
            raise ConfigError("window and poll must be > 0")
        if self.lease is None:
            self.lease = min(self.window, 10.0)
        elif not self.lease > 0:
            raise ConfigError(f"lease must be > 0, got {self.lease}")
        base = f"{self.prefix}{{{self.name}}}:limit"
        self._keys = [f"{base}:reqs", f"{base}:tokens", f"{base}:state"]
        self._slots = None if self.concurrency is None else trio.Semaphore(self.concurrency)
        for name, text in (
            ("acquire", _ACQUIRE),
            ("release", _RELEASE),
            ("refresh", _REFRESH),
            ("pause", _PAUSE),
        ):
            self._scripts[name] = self.client.register_script(text)

    @property
    def _running_expiry(self) -> int:
        assert self.lease is not None
        return _ms(self.lease + self.window)

    @property
    def _ttl(self) -> int:
        return 2 * self._running_expiry

    async def _call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._scripts[script](keys=keys, args=args)
        except (coredis.exceptions.RedisError, TimeoutError) as exc:
            raise QueueError(f"redis: {type(exc).__name__}: {exc}") from exc

    async def acquire(self, estimated_tokens: int) -> Permit:
        tpm = self.tokens_per_minute
        if tpm is not None and estimated_tokens > tpm:
            raise CostLimitError(
                f"the request needs about {estimated_tokens} tokens, over the limit of {tpm} "
                "tokens per minute; nothing was sent"
            )
        if self._slots is not None:
            await self._slots.acquire()
        try:
            member = uuid.uuid4().hex
            async with self._turn:  # this process's requests in arrival order
                while True:
                    reply = await self._call(
                        "acquire",
                        self._keys,
                        [
                            member,
                            estimated_tokens,
                            self.requests_per_minute or 0,
                            tpm or 0,
                            self._running_expiry,
                            self._ttl,
                        ],
                    )
                    admitted, wait, count, total, paused = (int(x) for x in reply)
                    self._snapshot = (count, total, trio.current_time() + paused / 1000)
                    if admitted:
                        break
                    await trio.sleep(min(wait / 1000, self.poll))
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise
        self._running[member] = estimated_tokens
        return _RedisPermit(self._release, member)

    async def pause(self, seconds: float) -> None:
        extended = await self._call("pause", self._keys[2:], [_ms(seconds), self._ttl])
        if int(extended):
            self._pauses += 1

    def statistics(self) -> LimiterStatistics:
        """What this process last saw of the shared counts (updated at each acquire)."""
        count, total, paused_until = self._snapshot
        return LimiterStatistics(
            running=len(self._running),
            requests=count,
            tokens=total,
            concurrency=self.concurrency,
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            window=self.window,
            paused_for=max(0.0, paused_until - trio.current_time()),
            pauses=self._pauses,
        )

    async def refresh_forever(self) -> None:
        """Push forward the leases of this process's running requests every ``lease / 3`` s."""
        assert self.lease is not None
        while True:
            await trio.sleep(self.lease / 3)
            if self._running:
                await self._call("refresh", self._keys[:1], [self._running_expiry, *self._running])

    async def _release(self, member: str, used: int | None) -> None:
        try:
            await self._call(
                "release",
                self._keys,
                [member, -1 if used is None else used, _ms(self.window), self._ttl],
            )
        finally:
            self._running.pop(member, None)
            if self._slots is not None:
                self._slots.release()


@attrs.define(eq=False)
class _RedisPermit:
    """A request's hold on a Redis limiter or budget: ``release`` settles it once, shielded
    (a cancelled request's hold is still given back)."""

    _settle: Callable[[str, int | None], Awaitable[None]]
    _member: str
    _released: bool = False

    async def release(self, used_tokens: int | None = None) -> None:
        if not self._released:
            self._released = True
            with trio.CancelScope(shield=True):
                await self._settle(self._member, used_tokens)


@attrs.define(eq=False)
class RedisTokenBudget:
    """The token budget of a queue (:meth:`RedisJobQueue.set_budget`), shared by every worker
    of it: a :class:`Budget` whose reservations and spending are counted in Redis, each
    reserve and settle one Lua script (atomic), checked before a request is sent. Without a
    budget set, it only counts what is spent (a budget set later counts it).

    A reservation counts until settled with the reported usage; this process pushes its
    reservations' leases forward every ``lease / 3`` s, and one whose lease ran out (its
    worker died) is counted as spent, its request may have been sent. ``poll``: the longest
    sleep before a reservation that must wait for running requests tries again. Made by
    :func:`open_redis_budget` (it runs the lease refresher).
    """

    client: coredis.Redis[Any]
    name: str = "default"
    lease: float = 10.0
    poll: float = 0.25
    prefix: str = "llmpipe:batch:"
    _keys: list[str] = attrs.field(init=False)
    _running: set[str] = attrs.field(factory=set, init=False)
    _scripts: dict[str, Any] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        if not self.lease > 0 or not self.poll > 0:
            raise ConfigError("lease and poll must be > 0")
        base = f"{self.prefix}{{{self.name}}}:budget"  # RedisJobQueue's budget keys
        self._keys = [base, f"{base}:running"]
        for name, text in (("reserve", _RESERVE), ("settle", _SETTLE), ("refresh", _REFRESH)):
            self._scripts[name] = self.client.register_script(text)

    async def _call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._scripts[script](keys=keys, args=args)
        except (coredis.exceptions.RedisError, TimeoutError) as exc:
            raise QueueError(f"redis: {type(exc).__name__}: {exc}") from exc

    async def reserve(self, tokens: int) -> Permit:
        member = uuid.uuid4().hex
        while True:
            self._running.add(member)  # refreshed from the script's first run on
            try:
                reply = await self._call("reserve", self._keys, [member, tokens, _ms(self.lease)])
            except BaseException:
                self._running.discard(member)
                raise
            outcome, spent, total = (int(x) for x in reply)
            if outcome == 2:
                return _RedisPermit(self._settle, member)
            self._running.discard(member)
            if outcome == 0:
                where = " (shared by the queue's workers)"
                raise BudgetExhausted(budget_message(tokens, spent, total, where))
            await trio.sleep(self.poll)

    async def refresh_forever(self) -> None:
        """Push forward the leases of this process's reservations every ``lease / 3`` s."""
        while True:
            await trio.sleep(self.lease / 3)
            if self._running:
                await self._call("refresh", self._keys[1:], [_ms(self.lease), *self._running])

    async def _settle(self, member: str, used: int | None) -> None:
        try:
            await self._call("settle", self._keys, [member, -1 if used is None else used])
        finally:
            self._running.discard(member)


class _Refreshes(Protocol):
    async def refresh_forever(self) -> None: ...


@contextlib.asynccontextmanager
async def _refreshing(leases: _Refreshes) -> AsyncIterator[None]:
    """Run ``leases.refresh_forever`` in the background of the block."""
    with lone_exception_unwrapped():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(leases.refresh_forever)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def open_redis_budget(
    client: coredis.Redis[Any], **options: Any
) -> AsyncIterator[RedisTokenBudget]:
    """A :class:`RedisTokenBudget` on ``client`` (entered by the caller) for the block, with its
    lease refresher running. ``options``: :class:`RedisTokenBudget`'s fields."""
    budget = RedisTokenBudget(client, **options)
    async with _refreshing(budget):
        yield budget


@contextlib.asynccontextmanager
async def open_redis_limiter(
    client: coredis.Redis[Any], **options: Any
) -> AsyncIterator[RedisLimiter]:
    """A :class:`RedisLimiter` on ``client`` (entered by the caller) for the block, with its
    lease refresher running. ``options``: :class:`RedisLimiter`'s fields."""
    limiter = RedisLimiter(client, **options)
    async with _refreshing(limiter):
        yield limiter
