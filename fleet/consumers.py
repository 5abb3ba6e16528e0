"""The dashboard's live feed: staff sessions join the fleet group and get every event as JSON."""

import asyncio
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import events, status, ticker


class FleetDashboardConsumer(AsyncJsonWebsocketConsumer):
    """Send a snapshot on connect, then node, deployment and gateway events as they happen (channel layer)."""

    groups: list[str] = []
    counted = False  # whether this socket is in events' count of open dashboards

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_active or not user.is_staff:
            await self.close()  # before accept(): the handshake is refused (403)
            return
        events.listening_on(asyncio.get_running_loop())
        ticker.ensure_running()
        await self.channel_layer.group_add(events.FLEET_GROUP, self.channel_name)
        await self.accept()
        self.counted = True
        await events.dashboard_opened()
        nodes, problem = await database_sync_to_async(status.safe_node_data)()
        await self.send_json({"type": "snapshot", "nodes": nodes, "problem": problem, "gateway": status.GATEWAY_ID})

    async def disconnect(self, code: int) -> None:
        if self.counted:
            self.counted = False
            events.dashboard_closed()
        if self.channel_layer is not None:
            await self.channel_layer.group_discard(events.FLEET_GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The page sends nothing that changes state; a ping gets a pong so it can show liveness."""
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def node_status(self, event: events.NodeStatusEvent) -> None:
        await self.send_json({"type": "node", "node": event["data"]})

    async def node_removed(self, event: events.NodeRemovedEvent) -> None:
        await self.send_json({"type": "node.removed", "id": event["data"]["id"]})

    async def gateway_stats(self, event: events.GatewayStatsEvent) -> None:
        await self.send_json({"type": "gateway", "stats": event["data"]})
