import hashlib
from typing import Any

import orjson
from django.db import connection, transaction
from django.utils import timezone

from .models import AuditEvent

GENESIS = "0" * 64
# Any constant works; it only has to be the same for every writer of the chain.
_CHAIN_LOCK_ID = 0x41585341


def _digest(prev_hash: str, fields: dict[str, Any]) -> str:
    canonical = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(prev_hash.encode() + canonical).hexdigest()


@transaction.atomic
def record_event(*, actor: str, action: str, target: str = "", data: dict[str, Any] | None = None) -> AuditEvent:
    """Append one hash-chained audit record (DB) in the caller's transaction."""
    if connection.vendor == "postgresql":
        # Serialises writers so two of them never chain onto the same previous record.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_ID])
    last = AuditEvent.objects.order_by("-id").only("hash").first()
    prev_hash = last.hash if last else GENESIS
    created_at = timezone.now()
    fields = {"created_at": created_at.isoformat(), "actor": actor, "action": action, "target": target, "data": data or {}}
    return AuditEvent.objects.create(
        created_at=created_at,
        actor=actor,
        action=action,
        target=target,
        data=data or {},
        prev_hash=prev_hash,
        hash=_digest(prev_hash, fields),
    )
