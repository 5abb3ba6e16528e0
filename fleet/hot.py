"""Hot fleet state in Redis: node telemetry mirrors, ejections and open dashboards, shared by every gateway.

Without Redis (all-in-one fallback only) the same calls use this process's memory.
"""

import asyncio
import time
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis
from django.conf import settings

TELEMETRY = "axs:node:{}:telemetry"
EJECTED = "axs:node:{}:ejected"
DASHBOARD_OPEN = "axs:dashboard:open"

_sync: redis.Redis | None = None
_async: dict[asyncio.AbstractEventLoop, aioredis.Redis] = {}
_memory: dict[str, tuple[bytes, float]] = {}


def _sync_client() -> redis.Redis | None:
    global _sync
    if not settings.REDIS_URL:
        return None
    if _sync is None:
        _sync = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    return _sync


def _async_client() -> aioredis.Redis | None:
    if not settings.REDIS_URL:
        return None
    loop = asyncio.get_running_loop()
    client = _async.get(loop)
    if client is None:
        client = _async[loop] = aioredis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    return client


def _memory_get(key: str) -> bytes | None:
    hit = _memory.get(key)
    return hit[0] if hit and hit[1] > time.monotonic() else None


def put_telemetry(name: str, telemetry: dict[str, Any], *, ttl: float) -> None:
    """Mirror a node's last heartbeat figures (expires with the node's liveness)."""
    value = orjson.dumps(telemetry)
    client = _sync_client()
    if client is None:
        _memory[TELEMETRY.format(name)] = (value, time.monotonic() + ttl)
        return
    try:
        client.set(TELEMETRY.format(name), value, px=int(ttl * 1000))
    except redis.RedisError:
        pass  # routing falls back to the telemetry stored with the node row


async def aread(names: list[str]) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Telemetry and ejection flags of these nodes, in one round trip."""
    keys = [TELEMETRY.format(n) for n in names] + [EJECTED.format(n) for n in names]
    client = _async_client()
    if not names:
        return {}, set()
    if client is None:
        values = [_memory_get(k) for k in keys]
    else:
        values = await client.mget(keys)
    telemetry = {n: orjson.loads(v) for n, v in zip(names, values[: len(names)]) if v}
    ejected = {n for n, v in zip(names, values[len(names) :]) if v}
    return telemetry, ejected


async def aeject(name: str, *, seconds: float) -> None:
    """Keep every gateway's traffic off a failing node for a cool-down."""
    client = _async_client()
    if client is None:
        _memory[EJECTED.format(name)] = (b"1", time.monotonic() + seconds)
        return
    await client.set(EJECTED.format(name), b"1", px=int(seconds * 1000))


async def amark_dashboard_open(*, seconds: float) -> None:
    """Say that a dashboard is open on this process, for `seconds` unless marked again."""
    client = _async_client()
    if client is not None:
        await client.set(DASHBOARD_OPEN, b"1", px=int(seconds * 1000))


async def adashboard_open() -> bool:
    """Whether some process marked an open dashboard (False without Redis: then only this process counts)."""
    client = _async_client()
    return client is not None and bool(await client.exists(DASHBOARD_OPEN))


def dashboard_open() -> bool:
    """`adashboard_open` for a sync caller (a heartbeat written from a node process)."""
    client = _sync_client()
    if client is None:
        return False
    try:
        return bool(client.exists(DASHBOARD_OPEN))
    except redis.RedisError:
        return True  # cannot tell: publish, as before this check existed
