"""Make the audit table append-only in the database itself: UPDATE and DELETE raise.

TRUNCATE stays possible for the table owner (test database flushes, a deliberate wipe by a DBA);
it is not something the application role does, and `audit verify` would expose a partial one.
"""

from django.db import migrations

POSTGRES_UP = """
CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_auditevent is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_auditevent_no_update BEFORE UPDATE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_auditevent_no_delete BEFORE DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
"""
POSTGRES_DOWN = """
DROP TRIGGER IF EXISTS audit_auditevent_no_update ON audit_auditevent;
DROP TRIGGER IF EXISTS audit_auditevent_no_delete ON audit_auditevent;
DROP FUNCTION IF EXISTS audit_refuse_change();
"""
SQLITE_UP = [
    "CREATE TRIGGER audit_auditevent_no_update BEFORE UPDATE ON audit_auditevent "
    "BEGIN SELECT RAISE(ABORT, 'audit_auditevent is append-only: UPDATE refused'); END;",
    "CREATE TRIGGER audit_auditevent_no_delete BEFORE DELETE ON audit_auditevent "
    "BEGIN SELECT RAISE(ABORT, 'audit_auditevent is append-only: DELETE refused'); END;",
]
SQLITE_DOWN = ["DROP TRIGGER IF EXISTS audit_auditevent_no_update;", "DROP TRIGGER IF EXISTS audit_auditevent_no_delete;"]


def _run(schema_editor, postgres: str | list[str], sqlite: list[str]) -> None:  # type: ignore[no-untyped-def]
    # The all-in-one may run on SQLite; both engines get the same guarantee in their own dialect.
    vendor = schema_editor.connection.vendor
    statements = [postgres] if vendor == "postgresql" and isinstance(postgres, str) else sqlite if vendor == "sqlite" else []
    for statement in statements:
        schema_editor.execute(statement, params=None)


def up(apps, schema_editor):  # type: ignore[no-untyped-def]
    _run(schema_editor, POSTGRES_UP, SQLITE_UP)


def down(apps, schema_editor):  # type: ignore[no-untyped-def]
    _run(schema_editor, POSTGRES_DOWN, SQLITE_DOWN)


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_audit_fields_usage")]

    operations = [migrations.RunPython(up, down)]
