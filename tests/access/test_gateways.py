"""Governance across two real gateway processes sharing one Postgres and one Redis.

Gateway A is the session's all-in-one (`server`); gateway B is a second `manage.py serve` on the
same database with its own node. B flushes its usage and rejection logs only at exit, so the
last test here proves that a clean shutdown loses nothing.
"""

import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
import redis

from tests.conftest import ARTIFACTS, Server, start_all_in_one

TOKENIZE = {"model": "smollm2", "content": "hello"}


@pytest.fixture(scope="module")
def gateway_b(server: Server) -> Iterator[Server]:
    # Quota counters are keyed by key and project ids, which a fresh database hands out again.
    client = redis.Redis.from_url(server.env["REDIS_URL"])
    for name in client.scan_iter("axs:q:*"):
        client.delete(name)
    client.close()
    env = {**server.env, "AXS_NODE_NAME": "e2e-node-b", "AXS_LOG_FLUSH_SECONDS": "3600"}
    gateway = start_all_in_one(env, ARTIFACTS / "server-b.log")
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    secret = server.manage("keys", "create", "gov-admin", "--scope", "admin", "--scope", "inference").strip()
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {secret}"}, timeout=60) as client:
        yield client


def _key(admin: httpx.Client, **fields: object) -> dict[str, object]:
    response = admin.post("/v1/admin/keys", json={"name": f"k-{uuid.uuid4().hex[:6]}", **fields})
    assert response.status_code == 201, response.text
    return response.json()


def _post(base_url: str, secret: object, path: str, body: dict[str, object], **headers: str) -> httpx.Response:
    return httpx.post(f"{base_url}{path}", json=body, headers={"Authorization": f"Bearer {secret}", **headers}, timeout=120)


def test_quota_is_shared_by_two_gateways_exactly(server, gateway_b, admin):
    # given a key allowed 6 requests a minute
    key = _key(admin, requests_per_minute=6)
    targets = [server.base_url, gateway_b.base_url] * 8

    # when 16 requests race through both gateways at once
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda base: (base, _post(base, key["secret"], "/v1/tokenize", TOKENIZE)), targets))

    # then exactly 6 pass, whichever gateway took them, and the rest get a 429 naming the limit
    statuses = [r.status_code for _, r in responses]
    assert statuses.count(200) == 6, statuses
    assert statuses.count(429) == 10, statuses
    refused = next(r for _, r in responses if r.status_code == 429)
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.json()["error"]["code"] == "requests_per_minute_exceeded"
    assert "requests_per_minute (6)" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert {base for base, r in responses if r.status_code == 429} == {server.base_url, gateway_b.base_url}


def test_revoked_key_is_refused_by_the_other_gateway_within_a_second(server, gateway_b, admin):
    # given a key both gateways have verified and cached
    key = _key(admin)
    assert _post(server.base_url, key["secret"], "/v1/tokenize", TOKENIZE).status_code == 200
    assert _post(gateway_b.base_url, key["secret"], "/v1/tokenize", TOKENIZE).status_code == 200

    # when it is revoked through gateway A
    assert admin.delete(f"/v1/admin/keys/{key['id']}").status_code == 200
    revoked_at = time.monotonic()
    on_b = _post(gateway_b.base_url, key["secret"], "/v1/tokenize", TOKENIZE)
    elapsed = time.monotonic() - revoked_at
    listing_on_b = httpx.get(f"{gateway_b.base_url}/v1/models", headers={"Authorization": f"Bearer {key['secret']}"})

    # then gateway B refuses its very next request
    assert on_b.status_code == 401
    assert on_b.json()["error"]["code"] == "invalid_api_key"
    assert elapsed < 1.0
    assert listing_on_b.status_code == 401


def test_model_outside_the_allowlist_is_403_and_a_policy_change_reaches_the_other_gateway(server, gateway_b, admin):
    # given a project that allows only some other model
    project = admin.post("/v1/admin/projects", json={"name": f"p-{uuid.uuid4().hex[:6]}", "allowed_models": ["other-model"]}).json()
    key = _key(admin, project=project["id"])
    chat = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    refused = _post(gateway_b.base_url, key["secret"], "/v1/chat/completions", chat)
    listed = httpx.get(f"{gateway_b.base_url}/v1/models", headers={"Authorization": f"Bearer {key['secret']}"}).json()
    # when the project's policy is changed through gateway A
    assert admin.patch(f"/v1/admin/projects/{project['id']}", json={"allowed_models": ["default"]}).status_code == 200
    allowed = _post(gateway_b.base_url, key["secret"], "/v1/chat/completions", chat)

    assert refused.status_code == 403
    assert refused.json()["error"] == {
        "message": f"The key '{key['name']}' is not allowed to use the model 'smollm2'.",
        "type": "permission_error",
        "param": "model",
        "code": "model_not_allowed",
    }
    assert listed["data"] == []
    assert allowed.status_code == 200  # "default" is an alias of smollm2


def test_key_without_admin_scope_cannot_reach_the_control_api(server, gateway_b, admin):
    key = _key(admin, scopes=["inference"])

    for base in (server.base_url, gateway_b.base_url):
        for method, path in (("GET", "/v1/admin/keys"), ("POST", "/v1/admin/keys"), ("PUT", "/v1/admin/policy"), ("GET", "/v1/admin/audit")):
            response = httpx.request(method, f"{base}{path}", json={}, headers={"Authorization": f"Bearer {key['secret']}"})
            assert response.status_code == 403, (base, path)
            assert response.json()["error"]["code"] == "missing_scope"


def test_max_tokens_cap_refuses_larger_requests_and_bounds_unset_ones(server, admin):
    project = admin.post("/v1/admin/projects", json={"name": f"cap-{uuid.uuid4().hex[:6]}", "max_tokens_cap": 3}).json()
    key = _key(admin, project=project["id"])
    chat = {"model": "smollm2", "messages": [{"role": "user", "content": "Write a long story."}]}

    too_many = _post(server.base_url, key["secret"], "/v1/chat/completions", {**chat, "max_tokens": 50})
    unset = _post(server.base_url, key["secret"], "/v1/chat/completions", {**chat, "logit_bias": {"0": -100, "2": -100}})

    assert too_many.status_code == 400
    assert too_many.json()["error"]["param"] == "max_tokens"
    assert too_many.json()["error"]["code"] == "max_tokens_over_cap"
    assert unset.status_code == 200
    assert unset.json()["usage"]["completion_tokens"] == 3


def test_tokens_are_settled_from_real_usage_across_gateways(server, gateway_b, admin):
    # given a key allowed 30 tokens a minute
    key = _key(admin, tokens_per_minute=30)
    chat = {"model": "smollm2", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 40, "logit_bias": {"0": -100, "2": -100}}

    # when one streamed answer spends more than that on gateway A
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json={**chat, "stream": True}, headers={"Authorization": f"Bearer {key['secret']}"}, timeout=120) as stream:
        body = b"".join(stream.iter_bytes())
    assert body.endswith(b"data: [DONE]\n\n")
    deadline = time.monotonic() + 3
    while True:
        after = _post(gateway_b.base_url, key["secret"], "/v1/tokenize", TOKENIZE)
        if after.status_code == 429 or time.monotonic() > deadline:
            break
        time.sleep(0.1)

    # then the next request, on gateway B, is refused on tokens per minute
    assert after.status_code == 429
    assert after.json()["error"]["code"] == "tokens_per_minute_exceeded"


def test_clean_shutdown_of_a_gateway_writes_its_buffered_logs(server, gateway_b, admin):
    # given traffic on gateway B, whose writers would only flush at exit
    key = _key(admin)
    request_id = f"shutdown-{uuid.uuid4().hex[:8]}"
    served = _post(gateway_b.base_url, key["secret"], "/v1/tokenize", TOKENIZE, **{"X-Request-ID": request_id})
    refused = _post(gateway_b.base_url, "sk-axs-not-a-key", "/v1/tokenize", TOKENIZE, **{"X-Request-ID": request_id + "-401"})
    assert (served.status_code, refused.status_code) == (200, 401)

    # when it stops cleanly
    gateway_b.process.send_signal(signal.SIGINT)
    gateway_b.process.wait(timeout=30)

    # then its usage row and both kinds of rejection audit are in Postgres, and the chain holds
    with psycopg.connect(server.env["DATABASE_URL"]) as conn:
        usage = conn.execute("SELECT key_id, endpoint, node, status FROM audit_usagerecord WHERE request_id = %s", [request_id]).fetchall()
        rejected = conn.execute(
            "SELECT actor, outcome, data FROM audit_auditevent WHERE request_id = %s AND action = 'request.rejected'", [request_id + "-401"]
        ).fetchall()
        quota_refusals = conn.execute(
            "SELECT count(*) FROM audit_auditevent WHERE action = 'request.rejected' AND data->>'code' = 'requests_per_minute_exceeded'"
        ).fetchone()
    assert len(usage) == 1 and usage[0][0] == key["id"] and usage[0][1:] == ("tokenize", usage[0][2], 200)
    assert rejected[0][0:2] == ("anonymous", "denied")
    assert rejected[0][2]["presented_prefix"] == "sk-axs-not-a-"
    assert quota_refusals[0] == 10  # every 429 of the quota test, from both gateways
    verify = admin.get("/v1/admin/audit/verify").json()
    assert verify["ok"], verify
