"""Processes for end-to-end tests: gateways, nodes and Celery workers on loopback, on a fresh database."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg
from django.conf import settings
from psycopg import sql

from tests.conftest import ARTIFACTS, ROOT, free_port, isolated_redis_url

CHAT = [{"role": "user", "content": "Tell me about rivers."}]
NO_EOS = {"0": -100, "2": -100}  # SmolLM2's end tokens: generations run to max_tokens


class Fleet:
    def __init__(self, prefix: str = "fleet", redis_offset: int = 2, **env: str) -> None:
        self.prefix = prefix
        db = settings.DATABASES["default"]
        self.db_name = f"test_axserving_fleet_{uuid.uuid4().hex[:8]}"
        self.db_params = dict(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"] or "postgres")
        self.env = {
            **os.environ,
            "DATABASE_URL": f"postgres://{self.db_params['user']}@{self.db_params['host']}:{self.db_params['port']}/{self.db_name}",
            "REDIS_URL": isolated_redis_url(redis_offset),
            "AXS_NODE_TOKEN": "fleet-test-token",
            "AXS_HEARTBEAT_INTERVAL": "0.5",
            "AXS_NODE_TTL": "2",
            "AXS_NODE_OFFLINE_AFTER": "4",
            "AXS_ROUTING_REFRESH": "0.3",
            "AXS_N_THREADS": "1",
            "AXS_SHUTDOWN_GRACE": "20",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.gateways: dict[str, str] = {}
        self.node_ports: dict[str, int] = {}
        self.key = ""

    def manage(self, *args: str, env: dict[str, str] | None = None) -> str:
        if args and args[0] == "shell":
            args = ("shell", "--verbosity=0", *args[1:])  # no "objects imported" banner on stdout
        out = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env or self.env, capture_output=True, text=True, check=True
        )
        return out.stdout

    def log(self, name: str) -> str:
        return (ARTIFACTS / f"{self.prefix}-{name}.log").read_text(errors="replace")

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        with (ARTIFACTS / f"{self.prefix}-{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "manage.py", *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop_all also reaps any children
            )

    def start_gateway(self, name: str, **extra_env: str) -> None:
        port = free_port()
        self.gateways[name] = f"http://127.0.0.1:{port}"
        self._spawn(name, ["rungateway", "--port", str(port)], {**self.env, **extra_env})

    def start_node(self, name: str, gateway: str = "gw-a", *extra: str) -> None:
        port = self.node_ports.setdefault(name, free_port())
        args = ["runnode", "--name", name, "--listen", f"127.0.0.1:{port}", "--gateway", self.gateways[gateway], *extra]
        self._spawn(name, args, self.env)

    def start_control_worker(self, schedule: str) -> None:
        """The fleet's control plane: a Celery worker on the default queue with the beat schedule."""
        ARTIFACTS.mkdir(exist_ok=True)
        with (ARTIFACTS / f"{self.prefix}-celery.log").open("ab") as log:
            self.procs["celery"] = subprocess.Popen(
                [str(Path(sys.executable).parent / "celery"), "-A", "axserving", "worker", "-B", "-Q", "celery",
                 "--pool", "solo", "--loglevel", "INFO", "--schedule", schedule, "-n", f"control-{self.db_name}@%h"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # -B runs beat in a child process, which a kill of the worker alone would orphan
            )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.procs[name].send_signal(sig)

    def workers(self, gateway: str = "gw-a") -> dict[str, dict]:
        response = httpx.get(f"{self.gateways[gateway]}/v1/workers", headers=self.auth, timeout=10)
        return {w["name"]: w for w in response.json()["data"]}

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def wait_until(self, predicate, timeout: float, what: str) -> float:
        started = time.monotonic()
        while not predicate():
            assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
            time.sleep(0.2)
        return time.monotonic() - started

    def ready_nodes(self, gateway: str = "gw-a") -> set[str]:
        return {n for n, w in self.workers(gateway).items() if w["state"] == "ready" and any(m["state"] == "ready" for m in w["models"])}

    def chat(self, gateway: str = "gw-a", **fields) -> httpx.Response:
        body = {"model": "smollm2", "messages": CHAT, "max_tokens": 8, **fields}
        return httpx.post(f"{self.gateways[gateway]}/v1/chat/completions", json=body, headers=self.auth, timeout=120)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the whole group, even when its leader was killed earlier
            except ProcessLookupError:
                pass
        for proc in self.procs.values():
            proc.wait(timeout=30)
        with psycopg.connect(dbname="postgres", autocommit=True, **self.db_params) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.db_name)))


def up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=2).status_code in (200, 503)
    except httpx.HTTPError:
        return False


def stream(fleet: Fleet, gateway: str, results: dict, key: str, **fields) -> None:
    """Stream a chat completion, recording its node, content events, error events and whether it ended with [DONE]."""
    body = {"model": "smollm2", "messages": CHAT, "stream": True, "max_tokens": 60, **fields}
    events: list[str] = []
    started = time.monotonic()
    with httpx.stream("POST", f"{fleet.gateways[gateway]}/v1/chat/completions", json=body, headers=fleet.auth, timeout=120) as r:
        node = r.headers.get("X-Node")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 3:
                    results.setdefault("first_bytes", {})[key] = time.monotonic()
    results[key] = {"status": r.status_code, "node": node, "events": events, "took": time.monotonic() - started, "ended": time.monotonic()}
