"""The audit chain: append-only in the database, tamper-evident, never forked."""

import threading
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, connections, transaction

from audit.models import AuditEvent
from audit.selectors import verify_chain
from audit.services import GENESIS, record_event, record_events

pytestmark = pytest.mark.django_db(transaction=True)


def _chain(n: int) -> list[AuditEvent]:
    return [record_event(actor="alice", action="thing.done", target=f"thing:{i}", after={"i": i}) for i in range(n)]


def _without_triggers(sql: str, params: list[object]) -> None:
    """Run tampering SQL as an owner who first disables the append-only triggers."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
        cursor.execute(sql, params)
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER USER")


@pytest.mark.parametrize("sql", ["UPDATE audit_auditevent SET actor = 'mallory' WHERE id = %s", "DELETE FROM audit_auditevent WHERE id = %s"])
def test_it_refuses_update_and_delete_in_the_database(sql):
    events = _chain(2)

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, [events[0].pk])

    assert AuditEvent.objects.get(pk=events[0].pk).actor == "alice"
    assert AuditEvent.objects.count() == 2


def test_it_refuses_orm_deletes_too():
    event = _chain(1)[0]

    with pytest.raises(DatabaseError):
        with transaction.atomic():
            AuditEvent.objects.filter(pk=event.pk).delete()

    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_verify_names_the_edited_record():
    events = _chain(5)
    _without_triggers("UPDATE audit_auditevent SET data = '{\"x\": 1}' WHERE id = %s", [events[2].pk])

    report = verify_chain()
    out = StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("audit", "verify", stdout=out, stderr=StringIO())

    assert (report.ok, report.broken_id, report.checked) == (False, events[2].pk, 2)
    assert report.reason == "record content does not match its hash"
    assert exit_info.value.code == 1
    assert f"BROKEN at record {events[2].pk}" in out.getvalue()


def test_verify_names_the_record_after_a_deleted_one():
    events = _chain(5)
    _without_triggers("DELETE FROM audit_auditevent WHERE id = %s", [events[1].pk])

    report = verify_chain()

    assert (report.ok, report.broken_id) == (False, events[2].pk)
    assert report.reason == "previous record missing or altered"
    assert (report.expected, report.found) == (events[0].hash, events[1].hash)


def test_verify_catches_a_rewritten_hash_that_breaks_the_next_link():
    events = _chain(3)
    # A forger recomputing the edited record's own hash still breaks the link of the next record.
    _without_triggers("UPDATE audit_auditevent SET hash = %s WHERE id = %s", ["f" * 64, events[1].pk])

    assert verify_chain().broken_id == events[1].pk


def test_verify_passes_an_intact_chain_from_the_command():
    _chain(3)
    record_events(events=[{"actor": "anonymous", "action": "request.rejected", "data": {"status": 401}}] * 2)
    out = StringIO()

    call_command("audit", "verify", stdout=out, stderr=StringIO())

    assert out.getvalue().strip() == "ok: 5 records, chain intact"


def test_fifty_concurrent_writers_produce_one_unbroken_chain():
    start = threading.Barrier(50)
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            start.wait()
            if i % 5 == 0:
                record_events(events=[{"actor": f"w{i}", "action": "batch", "data": {"n": n}} for n in range(3)])
            else:
                record_event(actor=f"w{i}", action="single", target=f"t{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    rows = list(AuditEvent.objects.order_by("id").values_list("prev_hash", "hash"))
    assert len(rows) == 40 + 10 * 3
    assert rows[0][0] == GENESIS
    assert all(rows[i][0] == rows[i - 1][1] for i in range(1, len(rows)))
    assert len({prev for prev, _ in rows}) == len(rows)  # no two records share a parent: no fork
    assert verify_chain().ok


def test_verify_accepts_records_hashed_before_the_newer_fields_existed_but_not_edits_to_them():
    import hashlib

    import orjson
    from django.utils import timezone

    # given a record as the first version of the chain wrote it (five hashed fields)
    created_at = timezone.now()
    legacy = {"created_at": created_at.isoformat(), "actor": "serve", "action": "api_key.created", "target": "api_key:1", "data": {}}
    digest = hashlib.sha256(GENESIS.encode() + orjson.dumps(legacy, option=orjson.OPT_SORT_KEYS)).hexdigest()
    old = AuditEvent.objects.create(**{**legacy, "created_at": created_at}, prev_hash=GENESIS, hash=digest)
    record_event(actor="alice", action="next")

    intact = verify_chain()
    _without_triggers("UPDATE audit_auditevent SET outcome = 'denied' WHERE id = %s", [old.pk])

    assert intact.ok and intact.checked == 2
    assert verify_chain().broken_id == old.pk
