"""Governance on the inference hot path: policy, quota admission, settlement and rejection audit.

Nothing here touches the database per request: keys and policies come from the process cache,
quotas cost one Redis round trip, and the usage log and rejection audit go to buffered writers.
"""

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.http import HttpRequest
from django.utils import timezone

from audit.models import Outcome as AuditOutcome
from audit.writers import audit_writer, usage_writer
from axserving.errors import ApiError
from fleet import dispatch

from . import quotas, selectors
from .errors import MaxTokensOverCap, MissingScope, ModelNotAllowed, QuotaExceeded
from .models import Scope
from .selectors import KeyInfo

AUDITED_STATUSES = frozenset({401, 403, 429})
# Endpoints whose generation length the project's max_tokens cap bounds.
_CAPPED = {"chat/completions": ("max_tokens", "max_completion_tokens"), "completions": ("max_tokens",)}
PRIORITY_HEADER = "X-Priority"


def require_scope(key: KeyInfo, scope: str) -> None:
    if scope not in key.scopes:
        raise MissingScope(f"This key lacks the '{scope}' scope.")


async def aallowed_model_names(key: KeyInfo) -> set[str]:
    """Canonical names of the models this key may use (all of them when no allowlist applies)."""
    table = await dispatch.aget_routing_table()
    return {name for name, view in table.models.items() if key.allows_model((view.name, *view.aliases))}


async def acheck_model(key: KeyInfo, name: str) -> None:
    """Raise ModelNotAllowed (403) unless the key and its project may use the named model."""
    if not key.key_models and not key.project_models:
        return
    view = (await dispatch.aget_routing_table()).find(name)
    names = (view.name, *view.aliases) if view else (name,)
    if not key.allows_model(names):
        raise ModelNotAllowed(f"The key '{key.name}' is not allowed to use the model '{name}'.", param="model")


def token_cap_default(key: KeyInfo, endpoint: str, payload: dict[str, Any]) -> int | None:
    """Refuse a max_tokens above the project's cap (400); return the cap when the request sets no limit."""
    fields = _CAPPED.get(endpoint)
    cap = key.max_tokens_cap
    if fields is None or cap is None:
        return None
    asked = [name for name in fields if name in payload]
    for name in asked:
        if payload[name] > cap:
            raise MaxTokensOverCap(f"{name} {payload[name]} exceeds this project's cap of {cap}.", param=name)
    return None if asked else cap


async def aauthenticate(request: HttpRequest) -> KeyInfo:
    """The request's key with the inference scope (401/403), re-read once if the scope was granted since it was cached."""
    key = await selectors.aget_api_key(request.headers.get("Authorization", ""))
    if Scope.INFERENCE not in key.scopes and await quotas.arefresh_if_changed():
        key = await selectors.aget_api_key(request.headers.get("Authorization", ""))
    require_scope(key, Scope.INFERENCE)
    return key


async def _areload_key(request: HttpRequest) -> KeyInfo:
    selectors.forget_cached_keys()
    key = await selectors.aget_api_key(request.headers.get("Authorization", ""))
    require_scope(key, Scope.INFERENCE)
    request.api_key = key  # type: ignore[attr-defined]
    return key


def priority_for(key: KeyInfo, header: str | None) -> int:
    """The request's priority: the header's value clamped to the project's maximum, else the project's default."""
    try:
        asked = int(header) if header is not None else key.default_priority
    except ValueError:
        asked = key.default_priority
    return min(asked, key.max_priority)


@dataclass(slots=True)
class Ticket:
    """An admitted request: settles its quota and writes its usage row exactly once."""

    key: KeyInfo
    request_id: str
    endpoint: str
    model: str
    slot: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.perf_counter)
    done: bool = False

    def _finish(self, *, model: str, node: str, status: int, usage: dict[str, int] | None) -> None:
        if self.done:
            return
        self.done = True
        usage = usage or {}
        total = int(usage.get("total_tokens") or (usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)))
        quotas.settle_soon(key=self.key, request_id=self.slot, tokens=total)
        usage_writer().add(
            {
                "created_at": timezone.now().isoformat(),
                "request_id": self.request_id,
                "key_id": self.key.id,
                "project_id": self.key.project_id,
                "endpoint": self.endpoint,
                "model": model[:200],
                "node": node[:200],
                "status": status,
                "prompt_tokens": int(usage.get("prompt_tokens", 0)),
                "completion_tokens": int(usage.get("completion_tokens", 0)),
                "total_tokens": total,
                "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
            }
        )

    def on_complete(self, outcome: Any) -> None:
        """The `aforward` hook: settle tokens (Redis, in the background) and queue the usage row."""
        self._finish(model=outcome.model, node=outcome.node, status=outcome.status, usage=outcome.usage)

    def release(self, status: int) -> None:
        """The request never reached a node: free its concurrency slot and log its status."""
        self._finish(model=self.model, node="", status=status, usage=None)


async def aadmit(*, request: HttpRequest, endpoint: str, payload: dict[str, Any]) -> Ticket:
    """Apply the key's policy and quotas to a request (403/400/429), or return its Ticket."""
    for attempt in range(3):
        key: KeyInfo = request.api_key  # type: ignore[attr-defined]
        model = str(payload.get("model", ""))
        try:
            await acheck_model(key, model)
            default_max_tokens = token_cap_default(key, endpoint, payload)
        except ApiError:
            # The cached policy may predate a change that allows this; refusals are rare, so ask Redis.
            if attempt == 0 and await quotas.arefresh_if_changed():
                await _areload_key(request)
                continue
            raise
        request.priority = priority_for(key, request.headers.get(PRIORITY_HEADER))  # type: ignore[attr-defined]
        ticket = Ticket(key=key, request_id=request.request_id, endpoint=endpoint, model=model)  # type: ignore[attr-defined]
        # The last attempt skips the version check, so constant churn cannot starve a request.
        admission = await quotas.areserve(key=key, request_id=ticket.slot, check_version=attempt < 2)
        if admission.stale:
            await _areload_key(request)
            continue
        denial = admission.denial
        if denial is not None:
            limit = getattr(key.key_limits if denial.scope == "key" else key.project_limits, denial.limit)
            owner = f"key '{key.name}'" if denial.scope == "key" else f"project '{key.project_name}'"
            raise QuotaExceeded(
                f"Quota exceeded for {owner}: {denial.limit} ({limit}). Retry after {denial.retry_after} s.",
                code=f"{denial.limit}_exceeded",
                headers={"Retry-After": str(denial.retry_after)},
            )
        if default_max_tokens is not None:
            payload["max_tokens"] = default_max_tokens
        return ticket
    raise AssertionError("unreachable: the last attempt never reports stale")


def audit_rejection(*, request: HttpRequest, error: ApiError, key: KeyInfo | None) -> None:
    """Queue a `request.rejected` audit event (buffered writer, DB later) for a 401/403/429."""
    if error.status not in AUDITED_STATUSES:
        return
    authorization = request.headers.get("Authorization", "")
    audit_writer().add(
        {
            "created_at": timezone.now().isoformat(),
            "actor": key.actor if key else "anonymous",
            "action": "request.rejected",
            "target": f"{request.method} {request.path}"[:200],
            "outcome": AuditOutcome.DENIED,
            "request_id": getattr(request, "request_id", ""),
            "data": {
                "status": error.status,
                "code": error.code,
                "message": error.message,
                "project": key.project_id if key else None,
                "presented_prefix": "" if key else selectors.presented_prefix(authorization),
                "client": request.META.get("REMOTE_ADDR", ""),
            },
        }
    )
