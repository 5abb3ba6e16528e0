"""The Django admin goes through the audited services; groups split operators from auditors."""

import pytest
from django.contrib.auth.models import Group, User
from django.contrib.messages import get_messages

from audit.models import AuditEvent
from axserving.access.models import ApiKey, GlobalPolicy
from axserving.access.selectors import get_global_policy
from axserving.access.services import create_api_key, hash_secret

pytestmark = pytest.mark.django_db(transaction=True)


def _staff(client, group: str):  # type: ignore[no-untyped-def]
    user = User.objects.create_user(f"{group}-user", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    client.force_login(user)
    return user


def test_admin_creates_a_key_shows_its_secret_once_and_audits_the_staff_user(admin_client):
    from axserving.access.services import ensure_default_project

    project = ensure_default_project()

    response = admin_client.post(
        "/admin/access/apikey/add/",
        {"project": project.pk, "name": "from-admin", "scopes": ["inference"], "allowed_models": "[]"},
        follow=True,
    )

    key = ApiKey.objects.get(name="from-admin")
    shown = [m.message for m in get_messages(response.wsgi_request)] + [response.content.decode()]
    secret = next(word for text in shown for word in text.split() if word.startswith("sk-axs-"))
    assert hash_secret(secret.rstrip("<.")) == key.hashed_secret
    assert AuditEvent.objects.get(action="api_key.created", target=f"api_key:{key.pk}").actor == "user:admin"


def test_admin_revoke_action_and_policy_edit_are_audited(admin_client):
    key, _ = create_api_key(name="old")
    get_global_policy()  # the migration's row; test flushes remove it

    admin_client.post("/admin/access/apikey/", {"action": "revoke_keys", "_selected_action": [key.pk]})
    admin_client.post(
        "/admin/access/globalpolicy/1/change/",
        {"routing_policy": "round_robin", "max_queue_per_model": 5, "queue_timeout_seconds": 10, "default_max_tokens_cap": ""},
    )

    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    assert AuditEvent.objects.get(action="api_key.revoked").actor == "user:admin"
    assert GlobalPolicy.objects.get(pk=1).max_queue_per_model == 5
    assert AuditEvent.objects.get(action="policy.global_changed").after["routing_policy"] == "round_robin"


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_auditor_reads_and_exports_the_audit_log_but_cannot_touch_keys(client):
    create_api_key(name="k", actor="alice")
    _staff(client, "auditors")
    event = AuditEvent.objects.get(action="api_key.created")

    listing = client.get("/admin/audit/auditevent/")
    export = client.post("/admin/audit/auditevent/", {"action": "export_jsonl", "_selected_action": [event.pk]})
    add_key = client.get("/admin/access/apikey/add/")

    assert listing.status_code == 200
    assert export.status_code == 200
    assert b'"actor":"alice"' in b"".join(export)  # the async stream, consumed the way a WSGI server would
    assert add_key.status_code == 403
    assert AuditEvent.objects.get(action="audit.exported").actor == "user:auditors-user"


def test_granting_a_staff_role_is_audited(admin_client):
    user = User.objects.create_user("carol", is_staff=True)
    auditors = Group.objects.get(name="auditors")

    response = admin_client.post(
        f"/admin/auth/user/{user.pk}/change/",
        {"username": "carol", "is_staff": "on", "is_active": "on", "groups": [auditors.pk], "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00"},
    )

    assert response.status_code == 302
    event = AuditEvent.objects.get(action="admin.changed", target=f"auth.user:{user.pk}")
    assert event.actor == "user:admin"
    assert "Groups" in event.after["change"][0]["changed"]["fields"]


def test_operator_cannot_export_the_audit_log(client):
    _staff(client, "operators")

    page = client.get("/admin/audit/auditevent/")

    assert page.status_code == 200
    assert b"export_jsonl" not in page.content
    assert client.get("/admin/fleet/node/").status_code == 200
