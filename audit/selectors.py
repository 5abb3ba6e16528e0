"""Reads over the audit chain and the usage log: verification, filtered listings, usage reports."""

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from django.db.models import Count, QuerySet, Sum

from .models import AuditEvent, UsageRecord
from .services import GENESIS, HASHED_FIELDS, chain_hash, legacy_chain_hash


@dataclass(frozen=True, slots=True)
class ChainReport:
    ok: bool
    checked: int
    broken_id: int | None = None
    reason: str = ""
    expected: str = ""
    found: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_chain(*, progress: Callable[[int], None] | None = None, chunk_size: int = 5000) -> ChainReport:
    """Walk the chain in id order; report the first record whose hash or link does not match."""
    prev_hash = GENESIS
    checked = 0
    rows = AuditEvent.objects.order_by("id").values_list("id", "prev_hash", "hash", *HASHED_FIELDS)
    for row in rows.iterator(chunk_size=chunk_size):
        pk, stored_prev, stored_hash = row[0], row[1], row[2]
        if stored_prev != prev_hash:
            # The record before this one was deleted, inserted out of chain, or altered.
            return ChainReport(False, checked, pk, "previous record missing or altered", prev_hash, stored_prev)
        fields = dict(zip(HASHED_FIELDS, row[3:], strict=True))
        expected = chain_hash(stored_prev, fields)
        if expected != stored_hash and legacy_chain_hash(stored_prev, fields) != stored_hash:
            return ChainReport(False, checked, pk, "record content does not match its hash", expected, stored_hash)
        prev_hash = stored_hash
        checked += 1
        if progress is not None:
            progress(1)
    return ChainReport(True, checked)


def list_audit_events(
    *,
    actor: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[AuditEvent]:
    """Audit events in chain order, narrowed by the given filters (exact actor/action/outcome/target, time range)."""
    events = AuditEvent.objects.order_by("id")
    if actor:
        events = events.filter(actor=actor)
    if action:
        events = events.filter(action=action)
    if outcome:
        events = events.filter(outcome=outcome)
    if target:
        events = events.filter(target=target)
    if since:
        events = events.filter(created_at__gte=since)
    if until:
        events = events.filter(created_at__lt=until)
    return events


USAGE_GROUPS = {"project": "project_id", "key": "key_id", "model": "model"}


def get_usage_report(*, since: datetime, until: datetime, group_by: list[str]) -> list[dict[str, Any]]:
    """Requests and tokens per (project, key, model) group for [since, until), for chargeback."""
    columns = [USAGE_GROUPS[name] for name in group_by]
    rows = (
        UsageRecord.objects.filter(created_at__gte=since, created_at__lt=until)
        .values(*columns)
        .annotate(
            requests=Count("id"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            total_tokens=Sum("total_tokens"),
        )
        .order_by(*columns)
    )
    renamed = {column: name for name, column in USAGE_GROUPS.items()}
    return [{renamed.get(k, k): v for k, v in row.items()} for row in rows]
