"""The buffered writers behind the hot path: batched, retried, spooled, replayed."""

from datetime import UTC, datetime

import pytest
from django.db import DatabaseError

from audit.buffer import BatchWriter
from audit.models import UsageRecord
from audit.services import record_usage

pytestmark = pytest.mark.django_db(transaction=True)


def _usage(i: int) -> dict[str, object]:
    return {
        "created_at": datetime.now(UTC).isoformat(),
        "request_id": f"r{i}",
        "key_id": 1,
        "project_id": 1,
        "endpoint": "chat/completions",
        "model": "smollm2",
        "node": "n1",
        "status": 200,
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
        "latency_ms": 1.5,
    }


def _writer(name: str, settings, tmp_path, **kwargs) -> BatchWriter:  # type: ignore[no-untyped-def]
    settings.AXS_SPOOL_DIR = str(tmp_path)
    return BatchWriter(name, lambda items: record_usage(records=items), interval=60, max_items=kwargs.get("max_items", 1000), batch=2, at_exit=False)


def test_it_writes_queued_items_in_batches(settings, tmp_path):
    writer = _writer("usage-test", settings, tmp_path)
    for i in range(5):
        writer.add(_usage(i))

    written = writer.flush()

    assert written == 5
    assert list(UsageRecord.objects.order_by("id").values_list("request_id", flat=True)) == ["r0", "r1", "r2", "r3", "r4"]


def test_it_keeps_items_when_the_database_refuses_and_drops_the_oldest_beyond_the_bound(settings, tmp_path):
    def refuse(items):  # type: ignore[no-untyped-def]
        raise DatabaseError("down")

    settings.AXS_SPOOL_DIR = str(tmp_path)
    writer = BatchWriter("usage-down", refuse, interval=60, max_items=3, at_exit=False)
    for i in range(5):
        writer.add(_usage(i))

    assert writer.flush() == 0
    assert len(writer) == 3
    assert writer.dropped == 2


def test_it_spools_what_it_cannot_write_at_exit_and_the_next_flush_replays_it(settings, tmp_path):
    def refuse(items):  # type: ignore[no-untyped-def]
        raise DatabaseError("down")

    settings.AXS_SPOOL_DIR = str(tmp_path)
    dying = BatchWriter("usage-spool", refuse, interval=60, max_items=100, at_exit=False)
    dying.add(_usage(1))
    dying.add(_usage(2))

    dying.close()
    spooled = list(tmp_path.glob("usage-spool-*.jsonl"))
    next_process = BatchWriter("usage-spool", lambda items: record_usage(records=items), interval=60, max_items=100, at_exit=False)
    next_process.flush()

    assert len(spooled) == 1
    assert sorted(UsageRecord.objects.values_list("request_id", flat=True)) == ["r1", "r2"]
    assert list(tmp_path.iterdir()) == []


async def test_it_flushes_by_itself_shortly_after_items_arrive(settings, tmp_path):
    import asyncio

    from asgiref.sync import sync_to_async
    from django.db import connections

    settings.AXS_SPOOL_DIR = str(tmp_path)
    writer = BatchWriter("usage-timer", lambda items: record_usage(records=items), interval=0.05, max_items=100, at_exit=False)
    writer.add(_usage(7))

    for _ in range(100):
        if await UsageRecord.objects.filter(request_id="r7").aexists():
            break
        await asyncio.sleep(0.05)

    assert await UsageRecord.objects.filter(request_id="r7").aexists()
    await sync_to_async(connections.close_all)()
