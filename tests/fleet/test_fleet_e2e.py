"""A real fleet on loopback: 3 gateway processes and 3 node processes on the bundled SmolLM2."""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import psycopg
import pytest
from django.conf import settings
from psycopg import sql

from tests.conftest import ARTIFACTS, ROOT, free_port

CHAT = [{"role": "user", "content": "Tell me about rivers."}]
NO_EOS = {"0": -100, "2": -100}  # SmolLM2's end tokens: generations run to max_tokens


class Fleet:
    def __init__(self) -> None:
        db = settings.DATABASES["default"]
        self.db_name = f"test_axserving_fleet_{uuid.uuid4().hex[:8]}"
        self.db_params = dict(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"] or "postgres")
        self.env = {
            **os.environ,
            "DATABASE_URL": f"postgres://{self.db_params['user']}@{self.db_params['host']}:{self.db_params['port']}/{self.db_name}",
            "REDIS_URL": settings.REDIS_URL,
            "AXS_NODE_TOKEN": "fleet-test-token",
            "AXS_HEARTBEAT_INTERVAL": "0.5",
            "AXS_NODE_TTL": "2",
            "AXS_NODE_OFFLINE_AFTER": "4",
            "AXS_ROUTING_REFRESH": "0.3",
            "AXS_N_THREADS": "1",
            "AXS_SHUTDOWN_GRACE": "20",
            "PYTHONUNBUFFERED": "1",
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.gateways: dict[str, str] = {}
        self.node_ports: dict[str, int] = {}
        self.key = ""

    def manage(self, *args: str, env: dict[str, str] | None = None) -> str:
        out = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env or self.env, capture_output=True, text=True, check=True
        )
        return out.stdout

    def log(self, name: str) -> str:
        return (ARTIFACTS / f"fleet-{name}.log").read_text(errors="replace")

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        with (ARTIFACTS / f"fleet-{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "manage.py", *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def start_gateway(self, name: str, **extra_env: str) -> None:
        port = free_port()
        self.gateways[name] = f"http://127.0.0.1:{port}"
        self._spawn(name, ["rungateway", "--port", str(port)], {**self.env, **extra_env})

    def start_node(self, name: str, gateway: str = "gw-a") -> None:
        port = self.node_ports.setdefault(name, free_port())
        self._spawn(name, ["runnode", "--name", name, "--listen", f"127.0.0.1:{port}", "--gateway", self.gateways[gateway]], self.env)

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
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait(timeout=30)
        with psycopg.connect(dbname="postgres", autocommit=True, **self.db_params) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.db_name)))


@pytest.fixture(scope="module")
def fleet():
    f = Fleet()
    for old_log in ARTIFACTS.glob("fleet-*.log"):
        old_log.unlink()
    try:
        f.manage("bootstrap")
        f.key = f.manage("keys", "create", "fleet-ops", "--scope", "inference", "--scope", "admin").strip()
        f.start_gateway("gw-a")
        f.start_gateway("gw-b")
        # A gateway with a tiny admission queue and deadline, for the 429 and 504 outcomes.
        f.start_gateway("gw-tight", AXS_ADMISSION_QUEUE="1", AXS_ADMISSION_TIMEOUT="1.5")
        for gw in f.gateways:
            f.wait_until(lambda gw=gw: _up(f.gateways[gw]), 60, f"{gw} to answer")
        for i, name in enumerate(("n1", "n2", "n3")):
            f.start_node(name, gateway="gw-a" if i % 2 == 0 else "gw-b")
        f.wait_until(lambda: f.ready_nodes() == {"n1", "n2", "n3"}, 180, "three ready nodes")
        yield f
    finally:
        f.stop_all()


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=2).status_code in (200, 503)
    except httpx.HTTPError:
        return False


def _stream(fleet: Fleet, gateway: str, results: dict, key: str, **fields) -> None:
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


def test_both_gateways_see_the_same_fleet(fleet):
    a, b = fleet.workers("gw-a"), fleet.workers("gw-b")

    assert set(a) == set(b) == {"n1", "n2", "n3"}
    assert all(w["address"].startswith("http://127.0.0.1:") for w in a.values())
    assert all(w["capacity"] >= 1 and w["free_memory_bytes"] > 0 for w in a.values())


def test_requests_spread_over_nodes_by_least_inflight(fleet):
    results: dict = {}
    threads = [
        threading.Thread(target=_stream, args=(fleet, "gw-a" if i % 2 else "gw-b", results, f"r{i}"), kwargs={"max_tokens": 30})
        for i in range(9)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    done = [results[f"r{i}"] for i in range(9)]
    assert all(r["status"] == 200 and r["events"][-1] == "[DONE]" for r in done)
    assert set(Counter(r["node"] for r in done)) == {"n1", "n2", "n3"}


def test_internal_endpoints_refuse_inference_keys(fleet):
    for path in ("/internal/nodes/register", "/internal/nodes/1/heartbeat"):
        response = httpx.post(f"{fleet.gateways['gw-a']}{path}", json={}, headers=fleet.auth)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_node_token"
    node_port = fleet.node_ports["n1"]
    response = httpx.post(f"http://127.0.0.1:{node_port}/internal/v1/chat/completions", json={}, headers=fleet.auth)
    assert response.status_code == 401


def test_drain_moves_traffic_off_a_node_with_no_failed_request(fleet):
    node_id = fleet.workers()["n1"]["id"]
    results: dict = {}
    streams = [threading.Thread(target=_stream, args=(fleet, "gw-a", results, f"s{i}")) for i in range(3)]
    for t in streams:
        t.start()
    fleet.wait_until(lambda: len(results.get("first_bytes", {})) == 3, 60, "streams to start")

    drained = httpx.post(f"{fleet.gateways['gw-b']}/v1/workers/{node_id}/drain", headers=fleet.auth)
    assert drained.status_code == 200
    assert drained.json()["state"] in {"draining", "drained"}
    time.sleep(1.0)  # every gateway's routing table refreshes within AXS_ROUTING_REFRESH
    after = [fleet.chat(gw).headers["X-Node"] for gw in ("gw-a", "gw-b") for _ in range(4)]
    for t in streams:
        t.join()

    assert all(results[f"s{i}"]["status"] == 200 and results[f"s{i}"]["events"][-1] == "[DONE]" for i in range(3))
    assert all("error" not in e for i in range(3) for e in results[f"s{i}"]["events"])
    assert "n1" not in after
    fleet.wait_until(lambda: fleet.workers()["n1"]["state"] == "drained", 10, "n1 to report drained")

    httpx.post(f"{fleet.gateways['gw-a']}/v1/workers/{node_id}/undrain", headers=fleet.auth)
    time.sleep(1.0)
    back = {fleet.chat("gw-a").headers["X-Node"] for _ in range(6)}
    assert "n1" in back


def test_admission_outcomes_429_504_and_503(fleet):
    # given every node busy with a long stream through the tight gateway (capacity = 3 slots)
    results: dict = {}
    hogs = [
        threading.Thread(target=_stream, args=(fleet, "gw-tight", results, f"h{i}"), kwargs={"max_tokens": 200, "logit_bias": NO_EOS})
        for i in range(3)
    ]
    for t in hogs:
        t.start()
    fleet.wait_until(lambda: len(results.get("first_bytes", {})) == 3, 60, "hogs to start")

    # when one more request waits (the queue holds 1) and another arrives
    waiter: dict = {}
    wait_thread = threading.Thread(target=lambda: waiter.update(r=fleet.chat("gw-tight")))
    wait_thread.start()
    time.sleep(0.3)
    full = fleet.chat("gw-tight")
    wait_thread.join()

    # then the extra one is refused at once and the waiting one times out
    assert full.status_code == 429
    assert full.json()["error"]["type"] == "rate_limit_error"
    assert int(full.headers["Retry-After"]) >= 1
    assert waiter["r"].status_code == 504
    assert waiter["r"].json()["error"]["type"] == "timeout_error"
    for t in hogs:
        t.join()

    # and a model no node serves is 503 with Retry-After
    fleet.manage(
        "shell", "-c",
        "from models_registry.models import *; f = ModelFile.objects.first(); "
        "RegisteredModel.objects.get_or_create(name='unserved', defaults={'file': f})",
    )
    time.sleep(1.0)
    unserved = fleet.chat("gw-a", model="unserved")
    assert unserved.status_code == 503
    assert unserved.json()["error"]["type"] == "service_unavailable"
    assert unserved.headers["Retry-After"]


def test_sigkill_mid_stream_ends_that_stream_with_an_error_and_spares_the_others(fleet):
    results: dict = {}
    streams = [
        threading.Thread(target=_stream, args=(fleet, "gw-a", results, f"k{i}"), kwargs={"max_tokens": 150, "logit_bias": NO_EOS})
        for i in range(3)
    ]
    for t in streams:
        t.start()
    fleet.wait_until(lambda: len(results.get("first_bytes", {})) == 3, 60, "streams to start")
    fleet.wait_until(lambda: any(w["inflight"] for w in fleet.workers().values()), 5, "a heartbeat to report the load")
    victim = next(n for n, w in fleet.workers().items() if w["inflight"] > 0)

    killed_at = time.monotonic()
    fleet.kill(victim)
    for t in streams:
        t.join()

    on_victim = [results[k] for k in ("k0", "k1", "k2") if results[k]["node"] == victim]
    others = [results[k] for k in ("k0", "k1", "k2") if results[k]["node"] != victim]
    assert on_victim, (victim, results)
    for r in on_victim:
        assert "error" in r["events"][-2] and r["events"][-1] == "[DONE]"
        assert r["ended"] - killed_at < 10
    for r in others:
        assert r["events"][-1] == "[DONE]"
        assert all("error" not in e for e in r["events"])
    fleet.start_node(victim)
    fleet.wait_until(lambda: victim in fleet.ready_nodes(), 120, f"{victim} to come back")


def test_sigkill_before_the_first_byte_is_invisible_to_clients(fleet):
    fleet.kill("n2")
    fleet.procs["n2"].wait()

    # the dead node is still in every routing table until its heartbeat TTL runs out
    responses = [fleet.chat(gw) for _ in range(4) for gw in ("gw-a", "gw-b")]

    assert [r.status_code for r in responses] == [200] * 8
    assert "Node n2 unreachable" in fleet.log("gw-a") + fleet.log("gw-b")
    assert all(r.headers["X-Node"] != "n2" for r in responses)


def test_a_stopped_node_goes_offline_within_the_ttl_and_returns(fleet):
    # n2 was killed by the previous test: its heartbeats stopped
    took = fleet.wait_until(lambda: fleet.workers()["n2"]["state"] == "offline", 15, "n2 offline")
    assert took <= 4 + 2  # AXS_NODE_OFFLINE_AFTER plus a heartbeat of slack
    assert all(fleet.chat().headers["X-Node"] != "n2" for _ in range(3))

    fleet.start_node("n2", gateway="gw-b")
    fleet.wait_until(lambda: "n2" in fleet.ready_nodes(), 120, "n2 to come back")
    time.sleep(1.0)
    assert "n2" in {fleet.chat().headers["X-Node"] for _ in range(9)}


def test_sigterm_on_a_node_finishes_in_flight_then_deregisters(fleet):
    results: dict = {}
    stream = threading.Thread(target=_stream, args=(fleet, "gw-b", results, "t0"), kwargs={"max_tokens": 80, "logit_bias": NO_EOS})
    stream.start()
    fleet.wait_until(lambda: len(results.get("first_bytes", {})) == 1, 60, "stream to start")
    fleet.wait_until(lambda: any(w["inflight"] for w in fleet.workers().values()), 5, "a heartbeat to report the load")
    busy = [n for n, w in fleet.workers().items() if w["inflight"] > 0]

    fleet.kill(busy[0], signal.SIGTERM)
    stream.join()
    fleet.procs[busy[0]].wait(timeout=40)

    assert results["t0"]["events"][-1] == "[DONE]"
    assert all("error" not in e for e in results["t0"]["events"])
    assert fleet.workers()[busy[0]]["state"] == "offline"
    assert fleet.procs[busy[0]].returncode == 0


def test_client_disconnect_frees_the_node_slot_within_a_second(fleet):
    body = {"model": "smollm2", "messages": CHAT, "stream": True, "max_tokens": 400, "logit_bias": NO_EOS}
    with httpx.stream("POST", f"{fleet.gateways['gw-a']}/v1/chat/completions", json=body, headers=fleet.auth, timeout=60) as r:
        node = r.headers["X-Node"]
        for i, _ in enumerate(r.iter_lines()):
            if i >= 6:
                break
    gone_at = time.monotonic()
    node_health = f"http://127.0.0.1:{fleet.node_ports[node]}/internal/health"
    token = {"Authorization": f"Bearer {fleet.env['AXS_NODE_TOKEN']}"}

    freed_after = fleet.wait_until(lambda: httpx.get(node_health, headers=token).json()["inflight"] == 0, 10, "slot freed")

    assert freed_after <= 1.0, f"slot freed {time.monotonic() - gone_at:.2f}s after the client left"
