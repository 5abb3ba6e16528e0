"""Streaming CSV and JSON Lines encoders for audit events: constant memory whatever the row count.

Rows come from a server-side cursor (`QuerySet.iterator`) and leave as byte chunks of
`batch` rows, so neither the queryset nor the output is ever held whole.
"""

import csv
import io
from collections.abc import Callable, Iterator

import orjson
from django.db.models import QuerySet

from .models import AuditEvent

EXPORT_FIELDS = (
    "id",
    "created_at",
    "actor",
    "action",
    "target",
    "outcome",
    "request_id",
    "before",
    "after",
    "data",
    "prev_hash",
    "hash",
)
JSON_FIELDS = frozenset({"before", "after", "data"})
FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


def _rows(queryset: QuerySet[AuditEvent], chunk_size: int) -> Iterator[tuple[object, ...]]:
    return queryset.order_by("id").values_list(*EXPORT_FIELDS).iterator(chunk_size=chunk_size)


def iter_csv(
    queryset: QuerySet[AuditEvent], *, batch: int = 1000, progress: Callable[[int], None] | None = None
) -> Iterator[bytes]:
    """Yield the header then the rows as CSV (JSON columns JSON-encoded), `batch` rows per chunk."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_FIELDS)
    count = 0
    for row in _rows(queryset, batch):
        writer.writerow(
            [
                orjson.dumps(value).decode() if name in JSON_FIELDS else value.isoformat() if name == "created_at" else value  # type: ignore[attr-defined]
                for name, value in zip(EXPORT_FIELDS, row, strict=True)
            ]
        )
        count += 1
        if count % batch == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
            if progress is not None:
                progress(batch)
    yield buffer.getvalue().encode()
    if progress is not None and count % batch:
        progress(count % batch)


def iter_jsonl(
    queryset: QuerySet[AuditEvent], *, batch: int = 1000, progress: Callable[[int], None] | None = None
) -> Iterator[bytes]:
    """Yield one JSON object per line, `batch` lines per chunk."""
    lines: list[bytes] = []
    for row in _rows(queryset, batch):
        lines.append(orjson.dumps(dict(zip(EXPORT_FIELDS, row, strict=True))))
        if len(lines) == batch:
            yield b"\n".join(lines) + b"\n"
            lines.clear()
            if progress is not None:
                progress(batch)
    if lines:
        yield b"\n".join(lines) + b"\n"
        if progress is not None:
            progress(len(lines))


def iter_export(
    queryset: QuerySet[AuditEvent], *, fmt: str, batch: int = 1000, progress: Callable[[int], None] | None = None
) -> Iterator[bytes]:
    """The export of `queryset` in `fmt` ("csv" or "jsonl")."""
    encode = iter_csv if fmt == "csv" else iter_jsonl
    return encode(queryset, batch=batch, progress=progress)
