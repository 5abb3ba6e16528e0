import pytest
from django.core.management import call_command
from io import StringIO

from audit.models import AuditEvent
from axserving.access.models import ApiKey, GlobalPolicy, PolicyVersion, Project
from axserving.access.selectors import aget_api_key, forget_cached_keys, get_api_key
from axserving.access.services import (
    create_api_key,
    create_project,
    hash_secret,
    revoke_api_key,
    update_global_policy,
    update_project,
)
from axserving.errors import AuthenticationFailed, InvalidRequest

from .factories import ProjectFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_create_api_key_stores_only_the_hash_and_audits():
    key, secret = create_api_key(name="team-a", actor="alice")

    stored = ApiKey.objects.get(pk=key.pk)
    assert stored.hashed_secret == hash_secret(secret)
    assert secret not in {stored.hashed_secret, stored.prefix, stored.name}
    assert secret.startswith(stored.prefix)
    assert stored.scopes == ["inference"]
    assert stored.project.name == "default"
    event = AuditEvent.objects.get(action="api_key.created")
    assert (event.actor, event.target) == ("alice", f"api_key:{key.pk}")
    assert secret not in str(event.after)


async def test_aget_api_key_caches_and_rejects_unknown_and_revoked():
    from asgiref.sync import sync_to_async
    from django.db import connections
    from django.utils import timezone

    forget_cached_keys()
    key, secret = await sync_to_async(create_api_key)(name="k")

    info = await aget_api_key(f"Bearer {secret}")
    assert info.id == key.pk
    with pytest.raises(AuthenticationFailed):
        await aget_api_key("Bearer sk-axs-unknown")
    await ApiKey.objects.filter(pk=key.pk).aupdate(revoked_at=timezone.now())
    forget_cached_keys()
    with pytest.raises(AuthenticationFailed):
        await aget_api_key(f"Bearer {secret}")
    await sync_to_async(connections.close_all)()  # the ORM's worker thread would keep the test DB open


def test_expired_key_is_refused():
    from datetime import timedelta

    from django.utils import timezone

    key, secret = create_api_key(name="old")
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    with pytest.raises(AuthenticationFailed):
        get_api_key(f"Bearer {secret}")


def test_keys_create_command_prints_the_secret_alone():
    out = StringIO()
    call_command("keys", "create", "ci-bot", "--rpm", "5", "--model", "smollm2", stdout=out)

    secret = out.getvalue().strip()
    assert secret.startswith("sk-axs-")
    assert "\n" not in secret
    key = ApiKey.objects.get(name="ci-bot")
    assert key.hashed_secret == hash_secret(secret)
    assert (key.requests_per_minute, key.allowed_models) == (5, ["smollm2"])


def test_revoke_api_key_audits_once_and_the_key_stops_working():
    key, secret = create_api_key(name="leaky")

    revoke_api_key(key_id=key.pk, actor="bob")
    revoke_api_key(key_id=key.pk, actor="bob")

    with pytest.raises(AuthenticationFailed):
        get_api_key(f"Bearer {secret}")
    event = AuditEvent.objects.get(action="api_key.revoked")
    assert event.before == {"revoked_at": None}
    assert event.after["revoked_at"]


def test_key_info_folds_in_the_project_policy_and_both_allowlists():
    project = create_project(name="research", actor="alice", allowed_models=["smollm2"], max_tokens_cap=64, requests_per_minute=9)
    key, secret = create_api_key(name="r1", project_id=project.pk, allowed_models=["other"], tokens_per_day=1000)

    info = get_api_key(f"Bearer {secret}")

    assert (info.project_id, info.project_name, info.max_tokens_cap) == (project.pk, "research", 64)
    assert info.project_limits.requests_per_minute == 9
    assert info.key_limits.tokens_per_day == 1000
    assert not info.allows_model(("smollm2", "default"))  # the key narrows the project's list to "other"
    assert not info.allows_model(("other",))  # ...which the project does not allow


def test_update_project_saves_a_new_policy_version_with_before_and_after():
    project = ProjectFactory()

    update_project(project_id=project.pk, actor="alice", changes={"max_tokens_cap": 100, "allowed_models": ["smollm2"]}, comment="cap it")

    project.refresh_from_db()
    assert project.policy_version == 2
    version = PolicyVersion.objects.get(project=project, version=2)
    assert (version.changed_by, version.comment, version.data["max_tokens_cap"]) == ("alice", "cap it", 100)
    event = AuditEvent.objects.get(action="policy.project_changed")
    assert event.before["max_tokens_cap"] is None
    assert event.after["max_tokens_cap"] == 100


def test_update_project_rejects_a_default_priority_above_the_maximum():
    project = ProjectFactory()

    with pytest.raises(InvalidRequest):
        update_project(project_id=project.pk, actor="alice", changes={"default_priority": 5})

    assert Project.objects.get(pk=project.pk).policy_version == 1


def test_global_policy_changes_are_versioned_and_audited():
    update_global_policy(actor="alice", changes={"max_queue_per_model": 8}, comment="small box")
    update_global_policy(actor="bob", changes={"routing_policy": "round_robin"})

    policy = GlobalPolicy.objects.get(pk=1)
    assert (policy.version, policy.max_queue_per_model, policy.routing_policy, policy.updated_by) == (3, 8, "round_robin", "bob")
    assert list(PolicyVersion.objects.filter(project=None).values_list("version", "changed_by")) == [(3, "bob"), (2, "alice")]
    assert AuditEvent.objects.filter(action="policy.global_changed").count() == 2


def test_staff_groups_separate_operators_from_auditors():
    from django.contrib.auth.models import Group

    operators = set(Group.objects.get(name="operators").permissions.values_list("codename", flat=True))
    auditors = set(Group.objects.get(name="auditors").permissions.values_list("codename", flat=True))

    assert {"change_node", "change_apikey", "view_auditevent"} <= operators
    assert "export_auditevent" not in operators
    assert {"view_auditevent", "view_usagerecord", "export_auditevent"} <= auditors
    assert not any(code.startswith(("add_", "change_", "delete_")) for code in auditors)
