"""The governance control API (`/v1/admin/*`) through DRF, against the test database."""

import pytest
from rest_framework.test import APIClient

from audit.models import AuditEvent
from axserving.access.models import ApiKey
from axserving.access.services import create_api_key, create_project

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_api() -> APIClient:
    _, secret = create_api_key(name="root", scopes=["admin"], actor="test")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_it_refuses_admin_routes_without_a_key_or_without_the_admin_scope():
    _, secret = create_api_key(name="plain", scopes=["inference"])
    anonymous, plain = APIClient(), APIClient()
    plain.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")

    no_key = anonymous.get("/v1/admin/keys")
    no_scope = plain.get("/v1/admin/policy")

    assert no_key.status_code == 401
    assert no_key.json()["error"]["type"] == "authentication_error"
    assert no_key["WWW-Authenticate"] == "Bearer"
    assert no_scope.status_code == 403
    assert no_scope.json()["error"] == {
        "message": "This key lacks the 'admin' scope.",
        "type": "permission_error",
        "param": None,
        "code": "missing_scope",
    }
    rejected = AuditEvent.objects.filter(action="request.rejected").order_by("id")
    assert [(e.actor, e.target, e.data["status"]) for e in rejected][-2:] == [
        ("anonymous", "GET /v1/admin/keys", 401),
        (f"key:{ApiKey.objects.get(name='plain').pk}", "GET /v1/admin/policy", 403),
    ]


def test_it_creates_a_key_whose_secret_is_shown_once(admin_api):
    project = create_project(name="vision", actor="test")

    created = admin_api.post(
        "/v1/admin/keys",
        {"name": "ci", "project": project.pk, "scopes": ["inference", "metrics"], "allowed_models": ["smollm2"], "requests_per_minute": 10},
        format="json",
    )
    listed = admin_api.get("/v1/admin/keys", {"project": project.pk})

    assert created.status_code == 201
    body = created.json()
    assert body["secret"].startswith(body["prefix"])
    assert (body["project_name"], body["scopes"], body["requests_per_minute"]) == ("vision", ["inference", "metrics"], 10)
    assert [k["name"] for k in listed.json()["data"]] == ["ci"]
    assert "secret" not in listed.json()["data"][0]
    assert body["secret"] not in listed.content.decode()
    event = AuditEvent.objects.get(action="api_key.created", target=f"api_key:{body['id']}")
    assert event.actor.startswith("key:")


def test_it_revokes_a_key_with_delete(admin_api):
    key, secret = create_api_key(name="gone")

    response = admin_api.delete(f"/v1/admin/keys/{key.pk}")
    missing = admin_api.delete("/v1/admin/keys/999999")
    reuse = APIClient()
    reuse.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")

    assert response.status_code == 200
    assert response.json()["revoked_at"]
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "key_not_found"
    assert AuditEvent.objects.filter(action="api_key.revoked", target=f"api_key:{key.pk}").count() == 1


@pytest.mark.parametrize(
    "body, param",
    [
        ({"name": "x", "scopes": ["root"]}, "scopes[0]"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "requests_per_minute": -1}, "requests_per_minute"),
        ({"name": "x", "project": 424242}, "project"),
        ({"scopes": ["admin"]}, "name"),
        ({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ],
)
def test_it_answers_bad_key_input_with_a_400_envelope(admin_api, body, param):
    response = admin_api.post("/v1/admin/keys", body, format="json")

    assert response.status_code in (400, 404)
    assert response.json()["error"]["param"] == param


def test_it_versions_the_global_policy_through_put(admin_api):
    before = admin_api.get("/v1/admin/policy").json()

    changed = admin_api.put("/v1/admin/policy", {"max_queue_per_model": 16, "comment": "tighter"}, format="json")
    bad = admin_api.put("/v1/admin/policy", {"routing_policy": "random"}, format="json")

    assert changed.status_code == 200
    body = changed.json()
    assert body["version"] == before["version"] + 1
    assert body["max_queue_per_model"] == 16
    assert body["history"][0]["comment"] == "tighter"
    assert body["history"][0]["changed_by"].startswith("key:")
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "routing_policy"
    event = AuditEvent.objects.get(action="policy.global_changed")
    assert (event.before["max_queue_per_model"], event.after["max_queue_per_model"]) == (before["max_queue_per_model"], 16)


def test_it_changes_a_project_policy_through_patch(admin_api):
    created = admin_api.post("/v1/admin/projects", {"name": "nlp", "tokens_per_day": 1000}, format="json").json()

    patched = admin_api.patch(f"/v1/admin/projects/{created['id']}", {"allowed_models": ["smollm2"], "max_tokens_cap": 32}, format="json")

    assert patched.status_code == 200
    assert (patched.json()["policy_version"], patched.json()["max_tokens_cap"]) == (2, 32)
    assert admin_api.get("/v1/admin/projects").json()["data"][-1]["name"] == "nlp"


def test_it_lists_filtered_audit_events_and_verifies_the_chain(admin_api):
    create_api_key(name="a1", actor="alice")
    create_api_key(name="b1", actor="bob")

    alice = admin_api.get("/v1/admin/audit", {"actor": "alice"}).json()
    bad_time = admin_api.get("/v1/admin/audit", {"since": "yesterday"})
    bad_format = admin_api.get("/v1/admin/audit", {"format": "xml"})
    verify = admin_api.get("/v1/admin/audit/verify").json()

    assert [e["action"] for e in alice["results"]] == ["api_key.created"]
    assert alice["count"] == 1
    assert bad_time.status_code == 400 and bad_time.json()["error"]["param"] == "since"
    assert bad_format.status_code == 400 and bad_format.json()["error"]["param"] == "format"
    assert verify["ok"] is True
    assert verify["checked"] == AuditEvent.objects.count()


def test_it_reports_usage_per_project_key_and_model(admin_api):
    from django.utils import timezone

    from audit.services import record_usage

    now = timezone.now()
    project = create_project(name="chargeback", actor="test")
    key, _ = create_api_key(name="billable", project_id=project.pk)
    row = {"created_at": now, "request_id": "r", "endpoint": "chat/completions", "node": "n", "status": 200, "latency_ms": 5.0}
    record_usage(
        records=[
            {**row, "key_id": 1, "project_id": 10, "model": "m", "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            {**row, "key_id": 1, "project_id": 10, "model": "m", "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            {**row, "key_id": 2, "project_id": 11, "model": "m", "prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5},
        ]
    )

    record_usage(records=[{**row, "key_id": key.pk, "project_id": project.pk, "model": "m", "prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}])

    by_project = admin_api.get("/v1/admin/usage", {"group_by": "project"}).json()["data"][:2]
    by_key = admin_api.get("/v1/admin/usage", {"group_by": "key,model"}).json()["data"]
    bad = admin_api.get("/v1/admin/usage", {"group_by": "colour"})

    assert by_project == [
        {"project": 10, "project_name": None, "requests": 2, "prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9},
        {"project": 11, "project_name": None, "requests": 1, "prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5},
    ]
    assert by_key[-1] == {
        "key": key.pk, "model": "m", "key_name": "billable", "key_prefix": key.prefix,
        "requests": 1, "prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4,
    }
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"
