"""Key verification with a per-process cache: no database query per request."""

import time
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from axserving.errors import AuthenticationFailed

from .models import ApiKey
from .services import hash_secret


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    name: str
    scopes: frozenset[str]


_cache: dict[str, tuple[KeyInfo | None, float]] = {}
_CACHE_MAX = 10_000


def _bearer(authorization: str) -> str:
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthenticationFailed()
    return secret.strip()


def _active_keys():  # type: ignore[no-untyped-def]
    now = timezone.now()
    return ApiKey.objects.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now), revoked_at__isnull=True)


async def aget_api_key(authorization: str) -> KeyInfo:
    """Return the key behind an Authorization header, or raise AuthenticationFailed (401)."""
    hashed = hash_secret(_bearer(authorization))
    now = time.monotonic()
    hit = _cache.get(hashed)
    if hit is not None and hit[1] > now:
        info = hit[0]
    else:
        key = await _active_keys().filter(hashed_secret=hashed).only("id", "name", "scopes").afirst()
        info = KeyInfo(id=key.pk, name=key.name, scopes=frozenset(key.scopes)) if key else None
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        # Unknown keys are cached briefly too, so a flood of bad keys does not reach the database.
        ttl = settings.AXS_KEY_CACHE_SECONDS if info else min(settings.AXS_KEY_CACHE_SECONDS, 2.0)
        _cache[hashed] = (info, now + ttl)
    if info is None:
        raise AuthenticationFailed()
    return info


def get_api_key(authorization: str) -> KeyInfo:
    """Synchronous lookup for DRF control-plane views (uncached: admin traffic is rare)."""
    key = _active_keys().filter(hashed_secret=hash_secret(_bearer(authorization))).first()
    if key is None:
        raise AuthenticationFailed()
    return KeyInfo(id=key.pk, name=key.name, scopes=frozenset(key.scopes))


def forget_cached_keys() -> None:
    _cache.clear()
