"""Quotas shared by every gateway: one Lua script, one Redis round trip per request.

Per scope (the key, and its project):
- requests per minute: a sliding log (sorted set of request ids by time), so exactly N pass in
  any 60 s window whichever gateway they reach;
- tokens per minute: sliding-window estimate over two per-minute counters;
- tokens per day: one counter per UTC day;
- max concurrent: a sorted set of in-flight request ids (entries older than
  AXS_INFLIGHT_TTL are dropped, so a crashed gateway cannot leak slots forever).
Tokens are not known at admission: a request is admitted while the window's settled usage is
under the limit, and its real usage is added when it completes (`asettle`).

The script also returns the governance version (invalidation.py); when it differs from the one
this process's caches were built at, nothing is counted and the caller refreshes and retries.

Redis unreachable: each process enforces the same limits on its own (so with G gateways a key
may get up to G times its limit) and retries Redis after AXS_QUOTA_REDIS_RETRY seconds.
"""

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass

import redis.asyncio as aioredis
from django.conf import settings

from .invalidation import VERSION_KEY
from .selectors import KeyInfo, Limits, forget_cached_keys

logger = logging.getLogger(__name__)

_ADMIT = """
local version = redis.call('GET', KEYS[1]) or '0'
if ARGV[1] ~= '*' and version ~= ARGV[1] then return {'stale', version} end
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local minute = math.floor(sec / 60)
local frac = (now - minute * 60000) / 60000
local day = math.floor(sec / 86400)
local rid = ARGV[2]
local ttl = tonumber(ARGV[3])
for i = 1, 2 do
  local p = KEYS[i + 1]
  local b = 3 + (i - 1) * 4
  local rpm, tpm, tpd, conc = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  if rpm >= 0 then
    redis.call('ZREMRANGEBYSCORE', p .. ':rpm', '-inf', now - 60000)
    if redis.call('ZCARD', p .. ':rpm') >= rpm then
      local oldest = redis.call('ZRANGE', p .. ':rpm', 0, 0, 'WITHSCORES')
      local wait = 60000
      if oldest[2] then wait = tonumber(oldest[2]) + 60000 - now end
      return {'limit', i, 'requests_per_minute', wait}
    end
  end
  if tpm >= 0 then
    local cur = tonumber(redis.call('GET', p .. ':tpm:' .. minute) or '0')
    local prev = tonumber(redis.call('GET', p .. ':tpm:' .. (minute - 1)) or '0')
    if prev * (1 - frac) + cur >= tpm then return {'limit', i, 'tokens_per_minute', (minute + 1) * 60000 - now} end
  end
  if tpd >= 0 then
    if tonumber(redis.call('GET', p .. ':tpd:' .. day) or '0') >= tpd then
      return {'limit', i, 'tokens_per_day', (day + 1) * 86400000 - now}
    end
  end
  if conc >= 0 then
    redis.call('ZREMRANGEBYSCORE', p .. ':conc', '-inf', now - ttl)
    if redis.call('ZCARD', p .. ':conc') >= conc then return {'limit', i, 'max_concurrent', 1000} end
  end
end
for i = 1, 2 do
  local p = KEYS[i + 1]
  local b = 3 + (i - 1) * 4
  if tonumber(ARGV[b + 1]) >= 0 then
    redis.call('ZADD', p .. ':rpm', now, rid)
    redis.call('PEXPIRE', p .. ':rpm', 61000)
  end
  if tonumber(ARGV[b + 4]) >= 0 then
    redis.call('ZADD', p .. ':conc', now, rid)
    redis.call('PEXPIRE', p .. ':conc', ttl)
  end
end
return {'ok', version}
"""

_SETTLE = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local minute = math.floor(sec / 60)
local day = math.floor(sec / 86400)
local tokens = tonumber(ARGV[2])
for i = 1, 2 do
  local p = KEYS[i]
  redis.call('ZREM', p .. ':conc', ARGV[1])
  if tokens > 0 then
    redis.call('INCRBY', p .. ':tpm:' .. minute, tokens)
    redis.call('EXPIRE', p .. ':tpm:' .. minute, 180)
    redis.call('INCRBY', p .. ':tpd:' .. day, tokens)
    redis.call('EXPIRE', p .. ':tpd:' .. day, 172800)
  end
end
return 1
"""

SCOPES = ("key", "project")
_POOL_WAIT = 5.0  # seconds a request waits for a free quota connection


@dataclass(frozen=True, slots=True)
class Denial:
    scope: str  # "key" or "project"
    limit: str  # requests_per_minute, tokens_per_minute, tokens_per_day, max_concurrent
    retry_after: int  # seconds


@dataclass(frozen=True, slots=True)
class Admission:
    """What `areserve` decided: `stale` = caches out of date (nothing counted), else admitted or denied."""

    denial: Denial | None = None
    stale: bool = False
    backend: str = "redis"


class _State:
    """Per-process Redis plumbing: one client per event loop, the governance version seen last."""

    clients: dict[int, tuple[aioredis.Redis, object, object]] = {}
    seen_version: str | None = None
    down_until: float = 0.0


def _client() -> tuple[aioredis.Redis, object, object] | None:
    if not settings.REDIS_URL or time.monotonic() < _State.down_until:
        return None
    loop = asyncio.get_running_loop()
    entry = _State.clients.get(id(loop))
    if entry is None or entry[0].connection_pool is None:
        # A bounded pool: each script takes well under a millisecond, so a few connections serve any
        # concurrency, where an unbounded pool grew to one connection (and its buffers) per request in
        # flight. Waiting for a free one is not Redis failing: under a saturated loop it can take a
        # while, so that wait has its own, longer limit.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=settings.AXS_QUOTA_REDIS_CONNECTIONS,
            timeout=_POOL_WAIT,
            socket_timeout=settings.AXS_QUOTA_REDIS_TIMEOUT,
            socket_connect_timeout=settings.AXS_QUOTA_REDIS_TIMEOUT,
        )
        client = aioredis.Redis(connection_pool=pool)
        entry = (client, client.register_script(_ADMIT), client.register_script(_SETTLE))
        _State.clients = {k: v for k, v in _State.clients.items() if k == id(loop)}  # old test loops are gone
        _State.clients[id(loop)] = entry
    return entry


def _prefixes(key: KeyInfo) -> list[str]:
    # One hash tag per project: a key's and its project's counters live in the same cluster slot.
    tag = f"axs:q:{{p{key.project_id}}}"
    return [f"{tag}:k{key.id}", f"{tag}:p"]


def _args(limits: Limits) -> list[int]:
    return [
        -1 if value is None else value
        for value in (limits.requests_per_minute, limits.tokens_per_minute, limits.tokens_per_day, limits.max_concurrent)
    ]


def _redis_failed(exc: Exception) -> None:
    if time.monotonic() >= _State.down_until:
        logger.warning("Redis unreachable for quotas, using per-process limits: %s", exc, extra={"redis": settings.REDIS_URL})
    _State.down_until = time.monotonic() + settings.AXS_QUOTA_REDIS_RETRY
    _State.seen_version = None


def redis_degraded() -> bool:
    """Whether this process is enforcing quotas locally because Redis did not answer."""
    return time.monotonic() < _State.down_until


async def areserve(*, key: KeyInfo, request_id: str, check_version: bool = True) -> Admission:
    """Count a request against its key's and project's limits (Redis, one round trip) or deny it."""
    entry = _client()
    if entry is not None:
        _, admit, _ = entry
        expected = (_State.seen_version or "") if check_version else "*"
        args = [expected, request_id, int(settings.AXS_INFLIGHT_TTL * 1000), *_args(key.key_limits), *_args(key.project_limits)]
        try:
            result = await admit(keys=[VERSION_KEY, *_prefixes(key)], args=args)  # type: ignore[operator]
        except (aioredis.RedisError, OSError) as exc:
            _redis_failed(exc)
        else:
            status = result[0].decode() if isinstance(result[0], bytes) else result[0]
            if status == "stale":
                _State.seen_version = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
                return Admission(stale=True)
            if status == "limit":
                return Admission(denial=Denial(SCOPES[int(result[1]) - 1], result[2].decode(), max(1, math.ceil(int(result[3]) / 1000))))
            return Admission()
    return Admission(denial=_local.reserve(key, request_id), backend="local")


# Strong references: the loop only keeps weak ones to tasks, and a settlement must not vanish.
_pending: set[asyncio.Task[None]] = set()


async def asettle(*, key: KeyInfo, request_id: str, tokens: int) -> None:
    """Release the request's concurrency slot and add its real token usage (Redis, one round trip)."""
    entry = _client()
    if entry is not None:
        try:
            await entry[2](keys=_prefixes(key), args=[request_id, max(tokens, 0)])  # type: ignore[operator]
            return
        except (aioredis.RedisError, OSError) as exc:
            _redis_failed(exc)
    _local.settle(key, request_id, tokens)


def settle_soon(*, key: KeyInfo, request_id: str, tokens: int) -> None:
    """Schedule `asettle` on the running loop without waiting for it (the caller is on the hot path)."""
    task = asyncio.get_running_loop().create_task(asettle(key=key, request_id=request_id, tokens=tokens))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


class _LocalLimiter:
    """The same limits, in this process's memory only: the fallback while Redis is unreachable."""

    def __init__(self) -> None:
        self.requests: dict[str, deque[float]] = {}
        self.tokens_minute: dict[str, deque[tuple[float, int]]] = {}
        self.tokens_day: dict[tuple[str, int], int] = {}
        self.inflight: dict[str, dict[str, float]] = {}

    def reserve(self, key: KeyInfo, request_id: str) -> Denial | None:
        now = time.time()
        day = int(now // 86400)
        scopes = list(zip(SCOPES, _prefixes(key), (key.key_limits, key.project_limits), strict=True))
        for scope, prefix, limits in scopes:
            window = self.requests.setdefault(prefix, deque())
            while window and window[0] <= now - 60:
                window.popleft()
            if limits.requests_per_minute is not None and len(window) >= limits.requests_per_minute:
                return Denial(scope, "requests_per_minute", max(1, math.ceil(window[0] + 60 - now)))
            spent = self.tokens_minute.setdefault(prefix, deque())
            while spent and spent[0][0] <= now - 60:
                spent.popleft()
            if limits.tokens_per_minute is not None and sum(n for _, n in spent) >= limits.tokens_per_minute:
                return Denial(scope, "tokens_per_minute", max(1, math.ceil(spent[0][0] + 60 - now)))
            if limits.tokens_per_day is not None and self.tokens_day.get((prefix, day), 0) >= limits.tokens_per_day:
                return Denial(scope, "tokens_per_day", max(1, math.ceil((day + 1) * 86400 - now)))
            running = self.inflight.setdefault(prefix, {})
            for rid in [rid for rid, started in running.items() if started <= now - settings.AXS_INFLIGHT_TTL]:
                del running[rid]
            if limits.max_concurrent is not None and len(running) >= limits.max_concurrent:
                return Denial(scope, "max_concurrent", 1)
        for _, prefix, _ in scopes:
            self.requests[prefix].append(now)
            self.inflight[prefix][request_id] = now
        return None

    def settle(self, key: KeyInfo, request_id: str, tokens: int) -> None:
        now = time.time()
        for prefix in _prefixes(key):
            self.inflight.get(prefix, {}).pop(request_id, None)
            if tokens > 0:
                self.tokens_minute.setdefault(prefix, deque()).append((now, tokens))
                slot = (prefix, int(now // 86400))
                self.tokens_day[slot] = self.tokens_day.get(slot, 0) + tokens


_local = _LocalLimiter()


async def arefresh_if_changed() -> bool:
    """Drop this process's key and policy caches if the governance version in Redis moved (one GET); say whether."""
    entry = _client()
    if entry is None:
        return False
    try:
        raw = await entry[0].get(VERSION_KEY)
    except (aioredis.RedisError, OSError) as exc:
        _redis_failed(exc)
        return False
    version = raw.decode() if raw else "0"
    if version == _State.seen_version:
        return False
    _State.seen_version = version
    forget_cached_keys()
    return True
