
import pytest

from audit.models import AuditEvent
from axserving.access.models import ApiKey
from axserving.access.selectors import aget_api_key, forget_cached_keys, get_api_key
from axserving.access.services import create_api_key, hash_secret
from axserving.errors import AuthenticationFailed

pytestmark = pytest.mark.django_db(transaction=True)


def test_create_api_key_stores_only_the_hash_and_audits():
    key, secret = create_api_key(name="team-a", actor="alice")

    stored = ApiKey.objects.get(pk=key.pk)
    assert stored.hashed_secret == hash_secret(secret)
    assert secret not in {stored.hashed_secret, stored.prefix, stored.name}
    assert secret.startswith(stored.prefix)
    assert stored.scopes == ["inference"]
    event = AuditEvent.objects.get(action="api_key.created")
    assert (event.actor, event.target) == ("alice", f"api_key:{key.pk}")


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


def test_keys_create_command_prints_the_secret_alone(settings):
    from django.core.management import call_command
    from io import StringIO

    out = StringIO()
    call_command("keys", "create", "ci-bot", stdout=out)

    secret = out.getvalue().strip()
    assert secret.startswith("sk-axs-")
    assert "\n" not in secret
    assert ApiKey.objects.get(name="ci-bot").hashed_secret == hash_secret(secret)
