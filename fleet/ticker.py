"""Each gateway process pushes its request, token and TTFT figures to the dashboards once a second.

One channel-layer message per process per second while a dashboard is open anywhere, whatever
the traffic: the hot path only adds to in-memory counters (axserving.metrics.live), and this task
ships them. It also keeps this process's open-dashboard mark fresh (fleet.events).
"""

import asyncio
import logging
import time

from axserving import metrics
from axserving.lifecycle import gateway

from . import events
from .status import GATEWAY_ID

logger = logging.getLogger(__name__)

INTERVAL = 1.0

_task: asyncio.Task[None] | None = None


def ensure_running() -> None:
    """Start the ticker on the running loop unless it already runs there (cheap to call per request)."""
    global _task
    task = _task
    if task is not None and not task.done():
        try:
            if task.get_loop() is asyncio.get_running_loop():
                return
        except RuntimeError:
            return
    try:
        _task = asyncio.get_running_loop().create_task(_run(), name="axs-dashboard-ticker")
    except RuntimeError:
        pass  # no running loop (sync caller): the next async request starts it


def stats(interval: float) -> events.GatewayStats:
    """Take this process's window and shape it as a gateway.stats payload."""
    from inference import admission

    window = metrics.live.take()
    return {
        "gateway": GATEWAY_ID,
        "at": time.time(),
        "interval": interval,
        "requests": window.requests,
        "errors": window.errors,
        "prompt_tokens": window.prompt_tokens,
        "completion_tokens": window.completion_tokens,
        "ttft_ms": [round(s * 1000, 1) for s in window.ttft],
        "inflight": max(gateway.inflight, 0),
        "queue_depth": admission.queue_depth(),
        "recent_errors": window.recent_errors,
        "totals": dict(metrics.live.totals),
    }


async def _run() -> None:
    last = time.monotonic()
    while True:
        await asyncio.sleep(INTERVAL)
        now = time.monotonic()
        try:
            window = stats(now - last)  # taken even when unwatched: an opened dashboard sees the last second, not a backlog
            if await events.amark_open():
                await events.apublish_gateway_stats(window)
        except Exception:  # the ticker must outlive any one failure; the next tick retries
            logger.warning("Dashboard tick failed", exc_info=True)
        last = now
