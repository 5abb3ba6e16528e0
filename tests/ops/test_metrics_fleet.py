"""/metrics parsed with prometheus_client's parser after known traffic through 2 gateway processes
sharing one node: each process counts its own requests, and both report the same fleet."""

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import CHAT, Fleet, up as _up


@pytest.fixture(scope="module")
def fleet():
    f = Fleet(prefix="metrics", redis_offset=4)
    try:
        f.manage("bootstrap")
        f.manage("keys", "project", "metrics-team")
        f.key = f.manage("keys", "create", "metrics-ops", "--project", "metrics-team", "--scope", "inference", "--scope", "admin").strip()
        f.start_gateway("gw-a")
        f.start_gateway("gw-b")
        for gw in f.gateways:
            f.wait_until(lambda gw=gw: _up(f.gateways[gw]), 60, f"{gw} to answer")
        f.start_node("metrics-n1")  # not n1: the fleet e2e module may have left n1 ejected in Redis
        f.wait_until(lambda: f.ready_nodes() == {"metrics-n1"}, 180, "a ready node")
        yield f
    finally:
        f.stop_all()


def scrape(fleet: Fleet, gateway: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{fleet.gateways[gateway]}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def test_each_gateway_counts_its_own_traffic_and_both_see_the_same_node(fleet):
    # given known traffic: 3 plain chats on gw-a; 2 streamed chats and 1 bad request on gw-b
    completion_tokens = {"gw-a": 0, "gw-b": 0}
    for _ in range(3):
        answer = fleet.chat("gw-a", max_tokens=4)
        assert answer.status_code == 200
        completion_tokens["gw-a"] += answer.json()["usage"]["completion_tokens"]
    for _ in range(2):
        body = {"model": "smollm2", "messages": CHAT, "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", f"{fleet.gateways['gw-b']}/v1/chat/completions", json=body, headers=fleet.auth, timeout=60) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data: {") and '"usage":{' in line.replace(" ", "")]
        completion_tokens["gw-b"] += httpx.Response(200, content=lines[-1][6:]).json()["usage"]["completion_tokens"]
    bad = httpx.post(f"{fleet.gateways['gw-b']}/v1/chat/completions", content=b"{oops", headers=fleet.auth, timeout=10)
    assert bad.status_code == 400

    # when both processes are scraped
    a, b = scrape(fleet, "gw-a"), scrape(fleet, "gw-b")

    # then each counts exactly its own requests, tokens and latencies
    ok = {"endpoint": "chat/completions", "model": "smollm2", "status": "200"}
    assert total(a, "axs_requests_total", **ok) == 3
    assert total(b, "axs_requests_total", **ok) == 2
    assert total(a, "axs_requests_total", **ok) + total(b, "axs_requests_total", **ok) == 5
    assert total(b, "axs_requests_total", status="400") == 1 and total(a, "axs_requests_total", status="400") == 0
    assert total(b, "axs_rejections_total", reason="invalid_json") == 1
    assert total(a, "axs_tokens_total", kind="completion") == completion_tokens["gw-a"]
    assert total(b, "axs_tokens_total", kind="completion") == completion_tokens["gw-b"]
    assert total(a, "axs_request_duration_seconds_count") == 3
    assert total(b, "axs_time_to_first_token_seconds_count") == 2  # only streams have a first token
    assert total(a, "axs_time_to_first_token_seconds_count") == 0
    assert total(a, "axs_gateway_overhead_seconds_count") == 3
    assert total(a, "axs_admission_wait_seconds_count") == 3
    assert total(a, "axs_requests_total", project="metrics-team") == 3
    # and both describe the same fleet, read from the shared registry
    for samples in (a, b):
        assert total(samples, "axs_node_up", node="metrics-n1") == 1
        assert total(samples, "axs_node_loaded_models", node="metrics-n1") == 1
        assert total(samples, "axs_deployment_state", model="smollm2", node="metrics-n1", state="ready") == 1
        assert total(samples, "axs_model_ready_nodes", model="smollm2") == 1
        assert total(samples, "axs_node_slots", node="metrics-n1") >= 1
        assert total(samples, "axs_gateway_inflight") == 0
    assert total(a, "axs_node_free_memory_bytes", node="metrics-n1") > 0

    # and /v1/metrics gives the same figures as JSON
    summary = httpx.get(f"{fleet.gateways['gw-b']}/v1/metrics", headers=fleet.auth, timeout=10).json()
    assert summary["requests"]["by_status"] == {"200": 2, "400": 1}
    assert summary["tokens"]["completion"] == completion_tokens["gw-b"]
    assert summary["ttft_ms"]["count"] == 2 and summary["ttft_ms"]["p95"] > 0
    assert summary["rejections"] == {"invalid_json": 1}
    assert [n["name"] for n in summary["nodes"]] == ["metrics-n1"]
