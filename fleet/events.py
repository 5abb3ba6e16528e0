"""The one place that builds the dashboard's group names and group_send payloads.

Publishing is best effort: a dashboard that misses one message catches up with the next
heartbeat, so a channel-layer failure is logged and never fails the write that triggered it.

Nothing is built or sent while no dashboard is open anywhere: a node's status costs a database
read and a channel-layer send per heartbeat, most of a heartbeat's cost at the gateway
(docs/benchmarks.md). Each process counts its own open dashboards and, once a second from its
ticker, marks them in Redis (fleet.hot) or learns whether another process has one. A newly
opened dashboard gets a snapshot, so the events it could not have seen are not needed.
"""

import asyncio
import logging
import time
from typing import Any, Literal, TypedDict

from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer, get_channel_layer
from redis.exceptions import RedisError

from . import hot
from .status import NodeData, get_node_data

logger = logging.getLogger(__name__)

FLEET_GROUP = "fleet.dashboard"


class NodeStatusEvent(TypedDict):
    type: Literal["node.status"]
    data: NodeData


class NodeRemovedEvent(TypedDict):
    type: Literal["node.removed"]
    data: dict[str, int]


class GatewayStats(TypedDict):
    gateway: str
    at: float
    interval: float
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: list[float]
    inflight: int
    queue_depth: dict[str, int]
    recent_errors: list[dict[str, Any]]
    totals: dict[str, int]


class GatewayStatsEvent(TypedDict):
    type: Literal["gateway.stats"]
    data: GatewayStats


Event = NodeStatusEvent | NodeRemovedEvent | GatewayStatsEvent

# With the in-memory layer (all-in-one without Redis) a group lives in one event loop: the
# loop of the consumers that joined it, recorded here so other threads hand messages over to it.
_listener_loop: asyncio.AbstractEventLoop | None = None


def listening_on(loop: asyncio.AbstractEventLoop) -> None:
    global _listener_loop
    _listener_loop = loop


# An open dashboard's mark in Redis lasts this long; the ticker of its process renews it each second.
OPEN_MARK_SECONDS = 5.0
# How long a process trusts what it last learnt about other processes' dashboards.
CHECK_EVERY = 1.0


class _Watch:
    local = 0  # dashboards open on this process
    elsewhere = False  # whether another process had one, as of `checked`
    checked = -CHECK_EVERY


async def dashboard_opened() -> None:
    _Watch.local += 1
    await amark_open()


def dashboard_closed() -> None:
    _Watch.local -= 1


async def amark_open() -> bool:
    """Renew this process's mark if it has an open dashboard, else look for one elsewhere; say whether one is open."""
    try:
        if _Watch.local > 0:
            await hot.amark_dashboard_open(seconds=OPEN_MARK_SECONDS)
            return True
        _Watch.elsewhere, _Watch.checked = await hot.adashboard_open(), time.monotonic()
    except (RedisError, OSError) as exc:
        logger.warning("Could not check for open dashboards: %s", exc)
        _Watch.elsewhere = True  # cannot tell: keep publishing
    return _Watch.elsewhere


def watched() -> bool:
    """Whether a dashboard is open anywhere (cached; a process without a ticker asks Redis at most once a second)."""
    if _Watch.local > 0:
        return True
    if time.monotonic() - _Watch.checked >= CHECK_EVERY:
        _Watch.elsewhere, _Watch.checked = hot.dashboard_open(), time.monotonic()
    return _Watch.elsewhere


def _send(event: Event) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        if isinstance(layer, InMemoryChannelLayer):
            loop = _listener_loop
            if loop is None or loop.is_closed():
                return  # nobody in this process watches
            asyncio.run_coroutine_threadsafe(layer.group_send(FLEET_GROUP, dict(event)), loop)
            return
        async_to_sync(layer.group_send)(FLEET_GROUP, dict(event))
    except (RedisError, OSError, ChannelFull, RuntimeError) as exc:
        logger.warning("Dashboard event not published: %s", exc, extra={"event": event["type"]})


def publish_node_status(*, node_id: int) -> None:
    """Push the node's current state and deployments to every dashboard (DB read, channel layer), if one is open."""
    if not watched():
        return
    data = get_node_data(node_id=node_id)
    if data is None:
        _send(NodeRemovedEvent(type="node.removed", data={"id": node_id}))
        return
    _send(NodeStatusEvent(type="node.status", data=data))


def publish_node_removed(*, node_id: int) -> None:
    """Tell every dashboard the node is gone (channel layer)."""
    _send(NodeRemovedEvent(type="node.removed", data={"id": node_id}))


async def apublish_gateway_stats(stats: GatewayStats) -> None:
    """Push this gateway process's last-interval figures to every dashboard (channel layer)."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(FLEET_GROUP, dict(GatewayStatsEvent(type="gateway.stats", data=stats)))
    except (RedisError, OSError, ChannelFull) as exc:
        logger.warning("Gateway stats not published: %s", exc, extra={"event": "gateway.stats"})
