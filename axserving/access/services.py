"""Every change to projects, keys and policies: one atomic action, one audit row, one cache invalidation."""

import hashlib
import secrets
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Model
from django.utils import timezone

from audit.services import record_event
from axserving.errors import InvalidRequest

from .errors import KeyNotFound, ProjectNotFound
from .invalidation import publish_on_commit
from .models import (
    GLOBAL_POLICY_FIELDS,
    PROJECT_POLICY_FIELDS,
    QUOTA_FIELDS,
    ApiKey,
    GlobalPolicy,
    PolicyVersion,
    Project,
    Scope,
)

KEY_PREFIX = "sk-axs-"
DEFAULT_PROJECT = "default"
PROJECT_FIELDS = ("description", *PROJECT_POLICY_FIELDS, *QUOTA_FIELDS)
KEY_FIELDS = ("name", "scopes", "allowed_models", "expires_at", *QUOTA_FIELDS)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def snapshot(instance: Model, fields: tuple[str, ...]) -> dict[str, Any]:
    """The audited view of an instance: the named fields, JSON-ready."""
    out: dict[str, Any] = {}
    for name in fields:
        value = getattr(instance, name)
        out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def _check_scopes(scopes: list[str]) -> None:
    unknown = sorted(set(scopes) - set(Scope.values))
    if unknown or not scopes:
        raise InvalidRequest(f"Scopes must be a non-empty subset of {Scope.values}.", param="scopes", code="invalid_scope")


def _check_priorities(default_priority: int, max_priority: int) -> None:
    if default_priority > max_priority:
        raise InvalidRequest("default_priority must not exceed max_priority.", param="default_priority")


@transaction.atomic
def ensure_default_project() -> Project:
    """Return the 'default' project, creating (DB) and auditing it the first time."""
    project = Project.objects.filter(name=DEFAULT_PROJECT).first()
    if project is None:
        project = create_project(name=DEFAULT_PROJECT, actor="system", description="Keys created without a project.")
    return project


@transaction.atomic
def create_project(*, name: str, actor: str, **fields: Any) -> Project:
    """Create a project (DB) with its first policy version, audit it, and invalidate gateway caches."""
    if Project.objects.filter(name=name).exists():
        raise InvalidRequest(f"A project named '{name}' exists.", param="name", code="project_exists")
    unknown = set(fields) - set(PROJECT_FIELDS)
    if unknown:
        raise InvalidRequest(f"Unknown project field {sorted(unknown)[0]}.", param=sorted(unknown)[0])
    _check_priorities(fields.get("default_priority", 0), fields.get("max_priority", 0))
    project = Project.objects.create(name=name, **fields)
    after = snapshot(project, ("name", *PROJECT_FIELDS))
    PolicyVersion.objects.create(project=project, version=1, data=after, changed_by=actor)
    record_event(actor=actor, action="project.created", target=f"project:{project.pk}", after=after)
    publish_on_commit()
    return project


@transaction.atomic
def update_project(*, project_id: int, actor: str, changes: dict[str, Any], comment: str = "") -> Project:
    """Change a project's policy or quotas (DB), save a new policy version, audit before/after, invalidate caches."""
    project = Project.objects.select_for_update().filter(pk=project_id).first()
    if project is None:
        raise ProjectNotFound()
    unknown = set(changes) - set(PROJECT_FIELDS)
    if unknown:
        raise InvalidRequest(f"Unknown project field {sorted(unknown)[0]}.", param=sorted(unknown)[0])
    before = snapshot(project, ("name", *PROJECT_FIELDS))
    for name, value in changes.items():
        setattr(project, name, value)
    _check_priorities(project.default_priority, project.max_priority)
    after = snapshot(project, ("name", *PROJECT_FIELDS))
    if after == before:
        return project
    project.policy_version += 1
    project.save(update_fields=[*changes, "policy_version", "updated_at"])
    PolicyVersion.objects.create(project=project, version=project.policy_version, data=after, changed_by=actor, comment=comment)
    record_event(
        actor=actor,
        action="policy.project_changed",
        target=f"project:{project.pk}",
        before=before,
        after=after,
        data={"version": project.policy_version, "comment": comment},
    )
    publish_on_commit()
    return project


@transaction.atomic
def create_api_key(
    *,
    name: str,
    scopes: list[str] | None = None,
    actor: str = "system",
    project_id: int | None = None,
    allowed_models: list[str] | None = None,
    expires_at: datetime | None = None,
    request_id: str = "",
    **quotas: int | None,
) -> tuple[ApiKey, str]:
    """Create a key (DB), audit it, invalidate caches; return it with its secret (shown once, never stored)."""
    scopes = scopes or [Scope.INFERENCE]
    _check_scopes(scopes)
    if set(quotas) - set(QUOTA_FIELDS):
        raise InvalidRequest("Unknown quota field.", param=sorted(set(quotas) - set(QUOTA_FIELDS))[0])
    if project_id is None:
        project = ensure_default_project()
    else:
        project = Project.objects.filter(pk=project_id).first()  # type: ignore[assignment]
        if project is None:
            raise ProjectNotFound(param="project")
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidRequest("expires_at must be in the future.", param="expires_at")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        project=project,
        name=name,
        prefix=secret[: len(KEY_PREFIX) + 6],
        hashed_secret=hash_secret(secret),
        scopes=list(scopes),
        allowed_models=allowed_models or [],
        expires_at=expires_at,
        created_by=actor,
        **quotas,
    )
    after = {"project": project.pk, "prefix": key.prefix, **snapshot(key, KEY_FIELDS)}
    record_event(actor=actor, action="api_key.created", target=f"api_key:{key.pk}", after=after, request_id=request_id)
    publish_on_commit()
    return key, secret


@transaction.atomic
def update_api_key(*, key_id: int, actor: str, changes: dict[str, Any], request_id: str = "") -> ApiKey:
    """Change a key's scopes, allowlist, expiry or quotas (DB), audit before/after, invalidate caches."""
    key = ApiKey.objects.select_for_update().filter(pk=key_id).first()
    if key is None:
        raise KeyNotFound()
    unknown = set(changes) - set(KEY_FIELDS)
    if unknown:
        raise InvalidRequest(f"Unknown key field {sorted(unknown)[0]}.", param=sorted(unknown)[0])
    if "scopes" in changes:
        _check_scopes(changes["scopes"])
    before = snapshot(key, KEY_FIELDS)
    for name, value in changes.items():
        setattr(key, name, value)
    after = snapshot(key, KEY_FIELDS)
    if after == before:
        return key
    key.save(update_fields=list(changes))
    record_event(
        actor=actor, action="api_key.updated", target=f"api_key:{key.pk}", before=before, after=after, request_id=request_id
    )
    publish_on_commit()
    return key


@transaction.atomic
def revoke_api_key(*, key_id: int, actor: str, request_id: str = "") -> ApiKey:
    """Revoke a key (DB), audit it and invalidate every gateway's cache; revoking twice changes nothing."""
    key = ApiKey.objects.select_for_update().filter(pk=key_id).first()
    if key is None:
        raise KeyNotFound()
    if key.revoked_at is not None:
        return key
    key.revoked_at = timezone.now()
    key.save(update_fields=["revoked_at"])
    record_event(
        actor=actor,
        action="api_key.revoked",
        target=f"api_key:{key.pk}",
        before={"revoked_at": None},
        after={"revoked_at": key.revoked_at.isoformat()},
        request_id=request_id,
    )
    publish_on_commit()
    return key


@transaction.atomic
def update_global_policy(*, actor: str, changes: dict[str, Any], comment: str = "", request_id: str = "") -> GlobalPolicy:
    """Change the fleet-wide policy (DB), save a new version, audit before/after, invalidate caches."""
    policy, _ = GlobalPolicy.objects.select_for_update().get_or_create(pk=1)
    unknown = set(changes) - set(GLOBAL_POLICY_FIELDS)
    if unknown:
        raise InvalidRequest(f"Unknown policy field {sorted(unknown)[0]}.", param=sorted(unknown)[0])
    before = snapshot(policy, GLOBAL_POLICY_FIELDS)
    for name, value in changes.items():
        setattr(policy, name, value)
    after = snapshot(policy, GLOBAL_POLICY_FIELDS)
    if after == before:
        return policy
    policy.version += 1
    policy.updated_by = actor
    policy.save(update_fields=[*changes, "version", "updated_by", "updated_at"])
    PolicyVersion.objects.create(project=None, version=policy.version, data=after, changed_by=actor, comment=comment)
    record_event(
        actor=actor,
        action="policy.global_changed",
        target="policy:global",
        before=before,
        after=after,
        data={"version": policy.version, "comment": comment},
        request_id=request_id,
    )
    publish_on_commit()
    return policy
