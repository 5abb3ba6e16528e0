"""Shared fixtures. `server` runs the real all-in-one (`manage.py serve`, what `make serve` runs)."""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from django.conf import settings
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def isolated_redis_url(offset: int) -> str:
    """An emptied Redis database of its own for one group of test processes.

    Celery queues, quota counters and caches are keyed by names and database ids that another
    group (on another Postgres database) would share.
    """
    import redis
    from urllib.parse import urlparse

    base = urlparse(settings.REDIS_URL)
    db = int(base.path.strip("/") or 0)
    url = base._replace(path=f"/{(db - offset) % 16}").geturl()
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    base_url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path

    def manage(self, *args: str) -> str:
        """Run a management command against the server's database; return its stdout."""
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, check=True
        )
        return result.stdout

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Ctrl-C, as an operator stops it (a clean shutdown flushes the buffered logs)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_all_in_one(env: dict[str, str], log_path: Path) -> Server:
    """`manage.py serve` (what `make serve` runs) on a free port; returns once /health says ok."""
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    srv = Server(base_url=f"http://127.0.0.1:{port}", env=env, process=process, log_path=log_path)
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            srv.stop()
            raise AssertionError(f"{log_path.name}: the server did not become healthy:\n{srv.log()}")
        try:
            if httpx.get(f"{srv.base_url}/health", timeout=2).json().get("status") == "ok":
                return srv
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


def _admin_conn() -> psycopg.Connection:
    db = settings.DATABASES["default"]
    return psycopg.connect(
        dbname="postgres", host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"] or "postgres", autocommit=True
    )


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """The all-in-one on a free port, on its own fresh Postgres database and the test Redis."""
    db = settings.DATABASES["default"]
    assert db["ENGINE"] == "django.db.backends.postgresql", "the end-to-end tests run against Postgres"
    name = f"test_axserving_e2e_{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{name}",
        "REDIS_URL": isolated_redis_url(1),
        "AXS_NODE_NAME": "e2e-node",
        # Fixed rather than generated per run, so a second gateway on this database can call this node.
        "AXS_NODE_TOKEN": uuid.uuid4().hex,
        "AXS_HEARTBEAT_INTERVAL": "1",
        "PYTHONUNBUFFERED": "1",
    }
    srv = start_all_in_one(env, ARTIFACTS / "server.log")
    try:
        yield srv
    finally:
        srv.stop()
        with _admin_conn() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def api_key(server: Server) -> str:
    """A fresh key made the way an operator makes one: `manage.py keys create NAME`."""
    return server.manage("keys", "create", "e2e").strip()


@pytest.fixture(scope="session")
def openai_client(server: Server, api_key: str):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    return OpenAI(base_url=f"{server.base_url}/v1", api_key=api_key, max_retries=0, timeout=120)


@pytest.fixture
def http(server: Server, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=120) as client:
        yield client


@pytest.fixture(scope="session", autouse=True)
def _forget_buffered_logs():
    """Drop what in-process tests left in the usage/audit buffers: the interpreter's exit flush would
    write it to the development database (or spool it for `make serve` to replay) after the test
    database is gone."""
    yield
    from audit import buffer

    for writer in buffer._writers:
        writer._items.clear()


@pytest.fixture(scope="session")
def _close_worker_thread_connections(django_db_setup, django_db_blocker):  # type: ignore[no-untyped-def]
    """The gateway reads and writes from executor threads (the routing table, heartbeats) whose connections
    outlive each test's event loop; end them so the test database can be dropped."""
    yield
    from django.db import connection

    if not connection.settings_dict["NAME"].startswith("test_"):
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
