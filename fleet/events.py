"""The one place that builds the dashboard's group names and group_send payloads.

Publishing is best effort: a dashboard that misses one message catches up with the next
heartbeat, so a channel-layer failure is logged and never fails the write that triggered it.
"""

import asyncio
import logging
from typing import Any, Literal, TypedDict

from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer, get_channel_layer
from redis.exceptions import RedisError

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
    """Push the node's current state and deployments to every dashboard (DB read, channel layer)."""
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
