"""Writes to the audit chain and the usage log."""

import hashlib
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import orjson
from django.db import connection, transaction
from django.utils import timezone

from .models import AuditEvent, Outcome, UsageRecord

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
# Any constant works; it only has to be the same for every writer of the chain.
_CHAIN_LOCK_ID = 0x41585341
HASHED_FIELDS = ("created_at", "actor", "action", "target", "outcome", "request_id", "before", "after", "data")


def json_safe(value: Any) -> Any:
    """The value as it reads back from a JSON column (datetimes as ISO strings), so hashing sees what is stored."""
    if value is None:
        return None
    return orjson.loads(orjson.dumps(value, default=str))


def canonical(fields: Mapping[str, Any]) -> bytes:
    """The one encoding every hash of the chain is computed over: sorted-key JSON of HASHED_FIELDS."""
    created_at = fields["created_at"]
    body = {name: fields[name] for name in HASHED_FIELDS}
    body["created_at"] = created_at.isoformat() if isinstance(created_at, datetime) else created_at
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical(fields)).hexdigest()


LEGACY_FIELDS = ("created_at", "actor", "action", "target", "data")


def legacy_chain_hash(prev_hash: str, fields: Mapping[str, Any]) -> str | None:
    """The hash records written before outcome/request id/before/after existed carry (migration 0002), or None.

    Only a record whose newer fields still hold their defaults can be one, so editing any of
    those fields is still detected.
    """
    if fields["outcome"] != Outcome.SUCCESS or fields["request_id"] or fields["before"] is not None or fields["after"] is not None:
        return None
    created_at = fields["created_at"]
    body = {name: fields[name] for name in LEGACY_FIELDS}
    body["created_at"] = created_at.isoformat() if isinstance(created_at, datetime) else created_at
    return hashlib.sha256(prev_hash.encode() + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _lock_chain() -> str:
    """Take the chain lock for this transaction and return the hash to chain onto."""
    if connection.vendor == "postgresql":
        # Serialises writers so two of them never chain onto the same previous record.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_ID])
    last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
    return last or GENESIS


def _draft(
    *,
    actor: str,
    action: str,
    target: str = "",
    data: dict[str, Any] | None = None,
    before: Any = None,
    after: Any = None,
    outcome: str = Outcome.SUCCESS,
    request_id: str = "",
    created_at: datetime | str | None = None,
) -> dict[str, Any]:
    if isinstance(created_at, str):
        created_at = datetime.fromisoformat(created_at)
    return {
        "created_at": created_at or timezone.now(),
        "actor": actor[:200],
        "action": action[:100],
        "target": target[:200],
        "outcome": str(outcome),
        "request_id": request_id[:128],
        "before": json_safe(before),
        "after": json_safe(after),
        "data": json_safe(data) or {},
    }


@transaction.atomic
def record_event(
    *,
    actor: str,
    action: str,
    target: str = "",
    data: dict[str, Any] | None = None,
    before: Any = None,
    after: Any = None,
    outcome: str = Outcome.SUCCESS,
    request_id: str = "",
) -> AuditEvent:
    """Append one hash-chained audit record (DB) in the caller's transaction."""
    fields = _draft(
        actor=actor, action=action, target=target, data=data, before=before, after=after, outcome=outcome, request_id=request_id
    )
    prev_hash = _lock_chain()
    return AuditEvent.objects.create(**fields, prev_hash=prev_hash, hash=chain_hash(prev_hash, fields))


@transaction.atomic
def record_events(*, events: Iterable[Mapping[str, Any]]) -> int:
    """Append many audit records (DB) under one chain lock; for the buffered writer of rejected requests."""
    drafts = [_draft(**event) for event in events]
    if not drafts:
        return 0
    prev_hash = _lock_chain()
    rows = []
    for fields in drafts:
        digest = chain_hash(prev_hash, fields)
        rows.append(AuditEvent(**fields, prev_hash=prev_hash, hash=digest))
        prev_hash = digest
    AuditEvent.objects.bulk_create(rows, batch_size=1000)
    return len(rows)


_USAGE_COLUMNS = (
    "created_at", "request_id", "key_id", "project_id", "endpoint", "model", "node",
    "status", "prompt_tokens", "completion_tokens", "total_tokens", "latency_ms",
)  # fmt: skip


def record_usage(*, records: Iterable[Mapping[str, Any]]) -> int:
    """Insert a batch of request/usage log rows (DB): one COPY on PostgreSQL, bulk INSERTs elsewhere.

    The log is written for every request, so its cost shows in the gateway's CPU per request;
    COPY costs a fraction of building and compiling model instances.
    """
    records = list(records)
    if connection.vendor == "postgresql":
        table = connection.ops.quote_name(UsageRecord._meta.db_table)
        with connection.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(_USAGE_COLUMNS)}) FROM STDIN") as copy:
            for record in records:
                copy.write_row([record.get(column) for column in _USAGE_COLUMNS])
        return len(records)
    rows = [
        UsageRecord(**{**record, "created_at": datetime.fromisoformat(record["created_at"])})
        if isinstance(record.get("created_at"), str)
        else UsageRecord(**record)
        for record in records
    ]
    UsageRecord.objects.bulk_create(rows, batch_size=1000)
    return len(rows)


def record_export(*, actor: str, fmt: str, filters: dict[str, Any], request_id: str = "") -> AuditEvent:
    """Audit that someone exported the audit log (DB): reading the record is itself on the record."""
    return record_event(actor=actor, action="audit.exported", target="audit", data={"format": fmt, "filters": filters}, request_id=request_id)
