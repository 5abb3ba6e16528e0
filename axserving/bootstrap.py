"""First-run set-up shared by `serve` and the tests: database, schema, bundled model, first key."""

import logging

import psycopg
from django.conf import settings
from django.core.management import call_command
from psycopg import sql

logger = logging.getLogger(__name__)


def ensure_database() -> None:
    """Create the configured Postgres database if the server has none of that name (SQLite needs nothing)."""
    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        (settings.BASE_DIR / "var").mkdir(exist_ok=True)
        return
    params = {"host": db.get("HOST") or None, "port": db.get("PORT") or None, "user": db.get("USER") or None, "password": db.get("PASSWORD") or None}
    with psycopg.connect(dbname="postgres", autocommit=True, **{k: v for k, v in params.items() if v}) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))
            logger.info("Created database %s", db["NAME"])


def migrate() -> None:
    call_command("migrate", interactive=False, verbosity=0)
