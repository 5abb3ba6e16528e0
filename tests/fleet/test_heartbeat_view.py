"""The heartbeat endpoint a node calls every few seconds (an async view): what it records, and how it refuses bad calls."""

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from django.utils import timezone

from fleet.models import Node

pytestmark = pytest.mark.django_db(transaction=True)  # the write runs on an executor thread, with its own connection

TOKEN = "node-secret"


@pytest.fixture
def node(settings, _close_worker_thread_connections) -> Node:  # type: ignore[no-untyped-def]
    settings.AXS_NODE_TOKEN = TOKEN
    now = timezone.now()
    return Node.objects.create(name="n1", address="http://127.0.0.1:1", status=Node.Status.STARTING, started_at=now, last_heartbeat=now, slots=1)


async def beat(node_id: int, body: object, *, token: str = TOKEN, method: str = "post"):
    send = getattr(AsyncClient(), method)
    return await send(
        f"/internal/nodes/{node_id}/heartbeat", body, content_type="application/json", headers={"Authorization": f"Bearer {token}"}
    )


async def test_a_heartbeat_records_the_nodes_load_and_says_whether_to_drain(node):
    response = await beat(node.pk, {"status": "ready", "telemetry": {"inflight": 3, "queued": 1, "slots": 4}})

    assert response.status_code == 200
    assert response.json() == {"id": node.pk, "drain_requested": False}
    stored = await sync_to_async(Node.objects.get)(pk=node.pk)
    assert (stored.status, stored.inflight, stored.queued, stored.slots) == ("ready", 3, 1, 4)


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"status": "asleep", "telemetry": {}}, 400, "invalid_value", "status"),
        ({"status": "ready"}, 400, "invalid_value", "telemetry"),
        ("{not json", 400, "invalid_json", None),
    ],
)
async def test_a_malformed_heartbeat_is_refused_with_the_envelope(node, body, status, code, param):
    response = await beat(node.pk, body)

    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["param"] == param


async def test_heartbeats_need_the_node_token_a_known_node_and_post(node):
    wrong_token = await beat(node.pk, {"status": "ready", "telemetry": {}}, token="an-api-key")
    unknown = await beat(node.pk + 1000, {"status": "ready", "telemetry": {}})
    get = await beat(node.pk, {}, method="get")

    assert (wrong_token.status_code, wrong_token.json()["error"]["code"]) == (401, "invalid_node_token")
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"
    assert (get.status_code, get["Allow"]) == (405, "POST")
