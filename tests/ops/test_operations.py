"""Admin status, diagnostics, startup report, /v1/metrics, /metrics and the dashboard page."""

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from fleet.models import Node

from .conftest import make_key, register_stub

pytestmark = pytest.mark.django_db


def get(client: Client, path: str, key: str | None = None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.get(path, headers=headers)


@pytest.fixture
def keys(fresh_caches):
    return {"admin": make_key("admin", name="adm"), "inference": make_key("inference"), "metrics": make_key("metrics", name="prom")}


def test_admin_endpoints_need_an_admin_key(client, keys):
    for path in ("/v1/admin/status", "/v1/admin/diagnostics", "/v1/admin/startup-report"):
        anonymous = get(client, path)
        inference = get(client, path, keys["inference"])

        assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"
        assert inference.status_code == 403 and inference.json()["error"]["code"] == "missing_scope"


def test_status_shows_nodes_models_and_this_gateway(client, keys):
    register_stub("http://127.0.0.1:1")

    body = get(client, "/v1/admin/status", keys["admin"]).json()

    assert body["nodes"][0]["name"] == "stub" and body["nodes"][0]["state"] == "ready"
    assert body["models"] == [{"id": "stubmodel", "ready_on": ["stub"], "deployments": {"ready": 1}}]
    assert body["gateway"]["id"] and "inflight" in body["gateway"]
    assert body["health"]["status"] in ("ok", "degraded")


def test_diagnostics_redact_secrets_and_check_dependencies(client, keys, settings):
    settings.AXS_NODE_TOKEN = "node-secret-value"
    settings.DATABASE_URL = "postgres://axs:hunter2@db.example:5432/axserving"

    response = get(client, "/v1/admin/diagnostics", keys["admin"])
    text = response.content.decode()
    body = response.json()

    assert "node-secret-value" not in text and "hunter2" not in text
    assert body["config"]["AXS_NODE_TOKEN"] == "***"
    assert body["config"]["DATABASE_URL"] == "postgres://axs:***@db.example:5432/axserving"
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["redis"]["status"] == "ok"
    assert body["checks"]["channel_layer"]["status"] == "ok"
    assert body["versions"]["Django"].startswith("5.2")


def test_startup_report_lists_storage_and_checks(client, keys):
    body = get(client, "/v1/admin/startup-report", keys["admin"]).json()

    assert body["database"]["engine"] == "postgresql"
    assert body["migrations"]["status"] == "ok"
    assert any(c["id"].startswith("security.") for c in body["checks"])


def test_v1_metrics_takes_a_metrics_key(client, keys):
    register_stub("http://127.0.0.1:1")

    refused = get(client, "/v1/metrics", keys["inference"])
    body = get(client, "/v1/metrics", keys["metrics"]).json()

    assert refused.status_code == 403
    assert body["object"] == "metrics"
    assert set(body) >= {"requests", "tokens", "ttft_ms", "latency_ms", "gateway_overhead_ms", "admission", "rejections", "retries"}
    assert body["nodes"][0]["name"] == "stub"


def test_prometheus_page_has_node_gauges_and_can_require_a_key(client, keys, settings):
    node = register_stub("http://127.0.0.1:1")
    Node.objects.filter(pk=node.pk).update(telemetry={"inflight": 3, "slots": 4, "free_memory_bytes": 1024})

    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").content.decode())}
    settings.AXS_METRICS_REQUIRE_KEY = True
    refused = client.get("/metrics")
    allowed = get(client, "/metrics", keys["metrics"])

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in families["axs_node_inflight"].samples}
    assert samples[("axs_node_inflight", (("node", "stub"),))] == 3
    assert families["axs_node_up"].samples[0].value == 1
    assert families["axs_model_ready_nodes"].samples[0].value == 1
    assert "django_http_requests_before_middlewares" in families
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    assert allowed.status_code == 200


def test_dashboard_needs_a_staff_login(client, django_user_model):
    register_stub("http://127.0.0.1:1")
    anonymous = client.get("/dashboard")
    client.force_login(django_user_model.objects.create_user("op", password="pw", is_staff=True))

    page = client.get("/dashboard")

    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="node-' in html and "/admin/fleet/node/" in html
    assert "dashboard.js" in html
