import hashlib
import secrets

from django.db import transaction

from audit.services import record_event

from .models import ApiKey, Scope

KEY_PREFIX = "sk-axs-"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def create_api_key(*, name: str, scopes: list[str] | None = None, actor: str = "system") -> tuple[ApiKey, str]:
    """Create a key, audit it, and return it with its secret (shown once, never stored)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        name=name,
        prefix=secret[: len(KEY_PREFIX) + 6],
        hashed_secret=hash_secret(secret),
        scopes=scopes or [Scope.INFERENCE],
    )
    record_event(actor=actor, action="api_key.created", target=f"api_key:{key.pk}", data={"name": name, "scopes": key.scopes})
    return key, secret
