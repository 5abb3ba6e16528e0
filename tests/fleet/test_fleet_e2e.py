"""A real fleet on loopback: 3 gateway processes and 3 node processes on the bundled SmolLM2."""

import signal
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.conftest import ARTIFACTS
from tests.processes import CHAT, NO_EOS, Fleet, up
from tests.processes import stream as _stream


@pytest.fixture(scope="module")
def fleet():
    f = Fleet(AXS_NODE_SLOTS="1")  # one sequence per node: three streams fill the fleet
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
            f.wait_until(lambda gw=gw: up(f.gateways[gw]), 60, f"{gw} to answer")
        for i, name in enumerate(("n1", "n2", "n3")):
            f.start_node(name, gateway="gw-a" if i % 2 == 0 else "gw-b")
        f.wait_until(lambda: f.ready_nodes() == {"n1", "n2", "n3"}, 180, "three ready nodes")
        yield f
    finally:
        f.stop_all()


def busy_nodes(fleet: Fleet) -> list[str]:
    """Nodes whose heartbeat reports requests in flight (waits for the next heartbeat)."""
    busy: list[str] = []

    def found() -> bool:
        busy[:] = [n for n, w in fleet.workers().items() if w["inflight"] > 0]
        return bool(busy)

    fleet.wait_until(found, 5, "a heartbeat to report the load")
    return busy


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
    fleet.wait_until(lambda: all(w["inflight"] == 0 for w in fleet.workers().values()), 30, "an idle fleet")
    time.sleep(1.0)  # idle telemetry reaches every routing table, so the three go to three nodes
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
    fleet.wait_until(lambda: httpx.get(f"{fleet.gateways['gw-tight']}/health").json()["queued"].get("smollm2") == 1, 5, "queued")
    full = fleet.chat("gw-tight")
    wait_thread.join()

    # then the extra one is refused at once and the waiting one times out
    assert full.status_code == 429, (full.text, waiter, {k: v for k, v in results.items() if k != "first_bytes"})
    assert full.json()["error"]["type"] == "rate_limit_error"
    assert full.reason_phrase == "Too Many Requests"  # Twisted alone would say "Unknown Status"
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
    victim = busy_nodes(fleet)[0]

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
    stream = threading.Thread(target=_stream, args=(fleet, "gw-b", results, "t0"), kwargs={"max_tokens": 200, "logit_bias": NO_EOS})
    stream.start()
    fleet.wait_until(lambda: len(results.get("first_bytes", {})) == 1, 60, "stream to start")
    busy = busy_nodes(fleet)

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


def test_sigterm_on_a_gateway_fails_readiness_finishes_streams_then_exits(fleet):
    fleet.start_gateway("gw-term")
    base = fleet.gateways["gw-term"]
    fleet.wait_until(lambda: up(base), 60, "gw-term")
    results: dict = {}
    stream = threading.Thread(target=_stream, args=(fleet, "gw-term", results, "g0"), kwargs={"max_tokens": 120, "logit_bias": NO_EOS})
    stream.start()
    fleet.wait_until(lambda: len(results.get("first_bytes", {})) == 1, 60, "stream to start")

    fleet.kill("gw-term", signal.SIGTERM)
    health = httpx.get(f"{base}/health")
    refused = fleet.chat("gw-term")
    stream.join()
    fleet.procs["gw-term"].wait(timeout=30)

    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "gateway_draining"
    assert results["g0"]["events"][-1] == "[DONE]" and not any("error" in e for e in results["g0"]["events"])
    assert fleet.procs["gw-term"].returncode == 0
