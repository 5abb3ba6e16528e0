"""The dashboard socket: who may join, the snapshot, and events published by heartbeats and the ticker."""

import asyncio
import contextlib

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User

from axserving import metrics
from fleet import consumers, events, hot, services, ticker

from .conftest import register_stub

pytestmark = pytest.mark.django_db(transaction=True)


async def join(user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(consumers.FleetDashboardConsumer.as_asgi(), "/ws/dashboard")
    communicator.scope["user"] = user
    return communicator


async def receive_type(ws: WebsocketCommunicator, kind: str, timeout: float = 3) -> dict:
    while True:
        message = await ws.receive_json_from(timeout=timeout)
        if message["type"] == kind:
            return message


@pytest.fixture
async def staff():
    return await sync_to_async(User.objects.create_user)("op", password="pw", is_staff=True)


async def test_it_refuses_anonymous_and_non_staff_users(fresh_caches):
    plain = await sync_to_async(User.objects.create_user)("someone", password="pw")
    for user in (AnonymousUser(), plain):
        ws = await join(user)

        connected, _ = await ws.connect()

        assert not connected


async def test_it_sends_a_snapshot_then_each_heartbeat_as_it_lands(staff, fresh_caches):
    node = await sync_to_async(register_stub)("http://127.0.0.1:1")
    ws = await join(staff)
    connected, _ = await ws.connect()
    assert connected
    snapshot = await receive_type(ws, "snapshot")
    assert [n["name"] for n in snapshot["nodes"]] == ["stub"]

    await sync_to_async(services.heartbeat_node)(
        node_id=node.pk, status="ready", telemetry={"inflight": 2, "slots": 4, "tokens_per_s": 31.5},
        models={"stubmodel": {"state": "ready"}},
    )
    update = await receive_type(ws, "node")

    assert update["node"]["name"] == "stub"
    assert update["node"]["inflight"] == 2 and update["node"]["slots"] == 4
    assert update["node"]["tokens_per_s"] == 31.5
    assert update["node"]["deployments"][0]["state"] == "ready"
    await ws.disconnect()


async def test_removing_a_node_tells_the_dashboard(staff, fresh_caches):
    node = await sync_to_async(register_stub)("http://127.0.0.1:1")
    ws = await join(staff)
    await ws.connect()
    await receive_type(ws, "snapshot")

    await sync_to_async(services.remove_node)(node_id=node.pk, actor="test", force=True)

    assert (await receive_type(ws, "node.removed"))["id"] == node.pk
    await ws.disconnect()


async def test_gateway_figures_reach_the_dashboard(staff, fresh_caches):
    ws = await join(staff)
    await ws.connect()
    await receive_type(ws, "snapshot")
    metrics.live.take()
    metrics.record_request(endpoint="chat/completions", model="m", project="p", status=200)
    metrics.record_ttft(model="m", seconds=0.25)

    await events.apublish_gateway_stats(ticker.stats(1.0))
    stats = (await receive_type(ws, "gateway"))["stats"]

    assert stats["requests"] == 1
    assert stats["ttft_ms"] == [250.0]
    assert stats["gateway"]
    await ws.disconnect()


async def heartbeat_events_seen(node, *, wait: float = 0.5) -> int:
    """Heartbeat once and count the node events a listener on the dashboards' group receives."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(events.FLEET_GROUP, channel)
    try:
        await sync_to_async(services.heartbeat_node)(node_id=node.pk, status="ready", telemetry={"inflight": 1, "slots": 4})
        seen = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                while True:
                    seen += (await layer.receive(channel))["type"] == "node.status"
        return seen
    finally:
        await layer.group_discard(events.FLEET_GROUP, channel)


async def test_heartbeats_publish_only_while_a_dashboard_is_open_on_some_gateway(fresh_caches):
    node = await sync_to_async(register_stub)("http://127.0.0.1:1")
    await hot._async_client().delete(hot.DASHBOARD_OPEN)
    events._Watch.checked = float("-inf")

    unwatched = await heartbeat_events_seen(node)
    await hot.amark_dashboard_open(seconds=5)  # what another gateway's ticker does while its dashboard is open
    events._Watch.checked = float("-inf")  # this process would learn it within a second
    watched = await heartbeat_events_seen(node)

    assert (unwatched, watched) == (0, 1)
    await hot._async_client().delete(hot.DASHBOARD_OPEN)
