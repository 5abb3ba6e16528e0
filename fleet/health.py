"""Liveness and servability of this gateway process, for `/health` and load balancers."""

import logging
from typing import Any

import redis.asyncio as aioredis
from django.conf import settings

from axserving.lifecycle import gateway

from . import dispatch

logger = logging.getLogger(__name__)


async def _redis_ok() -> str:
    if not settings.REDIS_URL:
        return "not_configured"
    client = aioredis.from_url(settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        await client.ping()
        return "ok"
    except (aioredis.RedisError, OSError):
        return "unreachable"
    finally:
        await client.aclose()


async def aget_health() -> dict[str, Any]:
    """ok = a model is servable and dependencies answer; degraded = alive but not; unavailable = no registry."""
    checks: dict[str, str] = {}
    try:
        table = await dispatch.aget_routing_table()
        checks["database"] = "ok"
    except Exception:
        logger.warning("Health: registry unreachable", exc_info=True)
        table = None
        checks["database"] = "unreachable"
    checks["redis"] = await _redis_ok()
    servable = table.servable if table else []
    if gateway.draining:
        status = "unavailable"
    elif table is None:
        status = "unavailable"
    elif servable and checks["redis"] != "unreachable":
        status = "ok"
    else:
        status = "degraded"
    reasons = [f"{name} {state}" for name, state in checks.items() if state == "unreachable"]
    if gateway.draining:
        reasons.append("gateway shutting down")
    if table is not None and not servable:
        reasons.append("no model is servable")
    from inference.admission import queue_depth

    return {
        "status": status,
        "models": servable,
        "checks": checks,
        "reasons": reasons,
        "inflight": gateway.inflight,
        "queued": queue_depth(),
    }
