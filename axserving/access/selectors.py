"""Key verification and the policy a key's requests obey, from a per-process cache.

No database query per request: a verified key (with its project's policy and quotas folded in)
stays cached until the governance version in Redis moves (see invalidation.py) or, without
Redis, for AXS_KEY_CACHE_SECONDS.
"""

import time
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from axserving.errors import AuthenticationFailed

from .models import ApiKey, GlobalPolicy, PolicyVersion, Project
from .services import hash_secret


@dataclass(frozen=True, slots=True)
class Limits:
    """Quota limits of one scope (key or project); None = unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    max_concurrent: int | None = None


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    name: str
    scopes: frozenset[str]
    project_id: int = 0
    project_name: str = ""
    key_models: frozenset[str] = frozenset()
    project_models: frozenset[str] = frozenset()
    max_tokens_cap: int | None = None
    default_priority: int = 0
    max_priority: int = 0
    key_limits: Limits = Limits()
    project_limits: Limits = Limits()

    @property
    def actor(self) -> str:
        return f"key:{self.id}"

    def allows_model(self, names: tuple[str, ...]) -> bool:
        """Whether any of a model's names (canonical first, then aliases) passes both allowlists."""
        for allowlist in (self.key_models, self.project_models):
            if allowlist and not allowlist.intersection(names):
                return False
        return True


_cache: dict[str, tuple[KeyInfo | None, float]] = {}
_CACHE_MAX = 10_000


def _bearer(authorization: str) -> str:
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthenticationFailed()
    return secret.strip()


def presented_prefix(authorization: str) -> str:
    """The non-secret identifying prefix of whatever bearer token was sent, for audit records."""
    _, _, secret = authorization.partition(" ")
    return secret.strip()[:13]


def _active_keys() -> QuerySet[ApiKey]:
    now = timezone.now()
    return ApiKey.objects.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now), revoked_at__isnull=True).select_related(
        "project"
    )


def _limits(source: ApiKey | Project) -> Limits:
    return Limits(source.requests_per_minute, source.tokens_per_minute, source.tokens_per_day, source.max_concurrent)


def _info(key: ApiKey, default_cap: int | None) -> KeyInfo:
    project = key.project
    return KeyInfo(
        id=key.pk,
        name=key.name,
        scopes=frozenset(key.scopes),
        project_id=project.pk,
        project_name=project.name,
        key_models=frozenset(key.allowed_models),
        project_models=frozenset(project.allowed_models),
        max_tokens_cap=project.max_tokens_cap if project.max_tokens_cap is not None else default_cap,
        default_priority=project.default_priority,
        max_priority=project.max_priority,
        key_limits=_limits(key),
        project_limits=_limits(project),
    )


def _default_cap() -> int | None:
    return GlobalPolicy.objects.filter(pk=1).values_list("default_max_tokens_cap", flat=True).first()


async def _adefault_cap() -> int | None:
    return await GlobalPolicy.objects.filter(pk=1).values_list("default_max_tokens_cap", flat=True).afirst()


async def aget_api_key(authorization: str) -> KeyInfo:
    """Return the key behind an Authorization header, or raise AuthenticationFailed (401)."""
    hashed = hash_secret(_bearer(authorization))
    now = time.monotonic()
    hit = _cache.get(hashed)
    if hit is not None and hit[1] > now:
        info = hit[0]
    else:
        key = await _active_keys().filter(hashed_secret=hashed).afirst()
        info = _info(key, await _adefault_cap()) if key else None
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
    return _info(key, _default_cap())


def forget_cached_keys() -> None:
    global _global_policy
    _cache.clear()
    _global_policy = None


def list_api_keys(*, project_id: int | None = None, active: bool | None = None) -> QuerySet[ApiKey]:
    keys = ApiKey.objects.select_related("project").order_by("id")
    if project_id is not None:
        keys = keys.filter(project_id=project_id)
    if active is True:
        keys = keys.filter(revoked_at__isnull=True).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
    elif active is False:
        keys = keys.filter(Q(revoked_at__isnull=False) | Q(expires_at__lte=timezone.now()))
    return keys


def list_projects() -> QuerySet[Project]:
    return Project.objects.order_by("name")


def get_global_policy() -> GlobalPolicy:
    policy, _ = GlobalPolicy.objects.get_or_create(pk=1)
    return policy


def list_policy_versions(*, project_id: int | None = None, limit: int = 50) -> QuerySet[PolicyVersion]:
    """Newest first: the global policy's versions, or one project's."""
    versions = PolicyVersion.objects.filter(project_id=project_id) if project_id else PolicyVersion.objects.filter(project__isnull=True)
    return versions.order_by("-version")[:limit]


@dataclass(frozen=True, slots=True)
class GlobalPolicyView:
    routing_policy: str
    max_queue_per_model: int
    queue_timeout_seconds: float
    default_max_tokens_cap: int | None
    version: int


_global_policy: tuple[GlobalPolicyView, float] | None = None


async def aget_global_policy() -> GlobalPolicyView:
    """The fleet-wide policy for the hot path (routing, admission limits), re-read at most every AXS_POLICY_REFRESH seconds."""
    global _global_policy
    now = time.monotonic()
    if _global_policy is not None and _global_policy[1] > now:
        return _global_policy[0]
    row = await GlobalPolicy.objects.filter(pk=1).afirst() or GlobalPolicy()
    view = GlobalPolicyView(
        row.routing_policy, row.max_queue_per_model, row.queue_timeout_seconds, row.default_max_tokens_cap, row.version
    )
    _global_policy = (view, now + settings.AXS_POLICY_REFRESH)
    return view


def label_usage_rows(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Add project and key names to usage report rows that carry their ids (two queries, whatever the row count)."""
    project_ids = {row["project"] for row in rows if row.get("project") is not None}
    key_ids = {row["key"] for row in rows if row.get("key") is not None}
    projects = dict(Project.objects.filter(pk__in=project_ids).values_list("pk", "name"))
    keys = {pk: (name, prefix) for pk, name, prefix in ApiKey.objects.filter(pk__in=key_ids).values_list("pk", "name", "prefix")}
    for row in rows:
        if "project" in row:
            row["project_name"] = projects.get(row["project"])  # type: ignore[call-overload]
        if "key" in row:
            row["key_name"], row["key_prefix"] = keys.get(row["key"], (None, None))  # type: ignore[call-overload]
    return rows
