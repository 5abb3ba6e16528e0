"""Model lifecycle through real Celery (Redis broker), real Postgres and real node processes."""

import re
import signal
import threading
import time

import httpx
import pytest

from tests.conftest import ARTIFACTS
from tests.processes import CHAT, NO_EOS, Fleet, up


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    models_dir = tmp_path_factory.mktemp("models")
    (models_dir / "readme.gguf").write_text("not a model")
    f = Fleet(
        prefix="lifecycle",
        redis_offset=3,
        AXS_SWEEP_INTERVAL="1",
        AXS_EVICT_INTERVAL="1",
        AXS_MODEL_DIRS=str(models_dir),
        DJANGO_SUPERUSER_PASSWORD="pw-for-tests",
    )
    f.models_dir = models_dir
    for old_log in ARTIFACTS.glob("lifecycle-*.log"):
        old_log.unlink()
    try:
        f.manage("bootstrap")
        f.key = f.manage("keys", "create", "ops", "--scope", "inference", "--scope", "admin").strip()
        f.manage("createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.org")
        f.start_gateway("gw-a")
        f.wait_until(lambda: up(f.gateways["gw-a"]), 60, "gateway")
        f.start_control_worker(str(tmp_path_factory.mktemp("beat") / "schedule"))
        f.start_node("n1", "gw-a")
        f.start_node("n2", "gw-a", "--empty")
        f.wait_until(lambda: f.ready_nodes() == {"n1"} and "n2" in f.workers(), 180, "nodes")
        f.wait_until(lambda: f.workers()["n2"]["state"] == "starting" or f.workers()["n2"]["state"] == "ready", 30, "n2 up")
        register = {"id": "smollm2-alt", "path": _bundled_path(f), "deploy": False, "n_ctx": 1024, "embeddings": False}
        assert f.api("POST", "/v1/models", json=register).status_code == 201
        yield f
    finally:
        f.stop_all()


def _bundled_path(f: Fleet) -> str:
    return f.manage("shell", "-c", "from models_registry.services import bundled_model_path; print(bundled_model_path())").strip()


def _api(self: Fleet, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, f"{self.gateways['gw-a']}{path}", headers=self.auth, timeout=30, **kw)


Fleet.api = _api  # type: ignore[attr-defined]


def deployment(fleet: Fleet, model: str, node: str) -> dict:
    rows = fleet.api("GET", "/v1/deployments").json()["data"]
    return next((d for d in rows if d["model"] == model and d["node"] == node), {})


def wait_state(fleet: Fleet, model: str, node: str, state: str, timeout: float = 60) -> float:
    return fleet.wait_until(lambda: deployment(fleet, model, node).get("state") == state, timeout, f"{model} on {node} {state}")


def served_by(fleet: Fleet, model: str) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=f"{fleet.gateways['gw-a']}/v1", api_key=fleet.key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model=model, messages=CHAT, max_tokens=4)
    assert raw.parse().choices[0].message.content is not None
    return raw.headers["X-Node"]


def unload(fleet: Fleet, model: str, node: str) -> None:
    assert fleet.api("DELETE", f"/v1/models/{model}").status_code == 200
    wait_state(fleet, model, node, "unloaded")


def test_load_through_rest_on_a_named_node_serves_there(fleet):
    response = fleet.api("POST", "/v1/models", json={"id": "smollm2-alt", "node": "n2"})

    assert response.status_code == 202
    assert response.headers["Location"] == response.json()["deployment"]["url"]
    wait_state(fleet, "smollm2-alt", "n2", "ready")
    time.sleep(0.7)  # routing tables refresh
    assert served_by(fleet, "smollm2-alt") == "n2"
    again = fleet.api("POST", "/v1/models", json={"id": "smollm2-alt", "node": "n2"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "model_already_loaded"
    unload(fleet, "smollm2-alt", "n2")


def test_load_through_the_management_command_with_progress(fleet):
    out = fleet.manage("models", "load", "smollm2-alt", "--node", "n1", "--wait")

    assert "ready: smollm2-alt on n1" in out
    time.sleep(0.7)
    assert served_by(fleet, "smollm2-alt") == "n1"
    unload(fleet, "smollm2-alt", "n1")


def test_load_through_the_admin_action(fleet):
    admin = httpx.Client(base_url=fleet.gateways["gw-a"], timeout=30)
    login = admin.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
    admin.post("/admin/login/?next=/admin/", data={"username": "admin", "password": "pw-for-tests", "csrfmiddlewaretoken": token})
    page = admin.get("/admin/models_registry/registeredmodel/")
    assert page.status_code == 200 and "smollm2-alt" in page.text
    pk = fleet.manage("shell", "-c", "from models_registry.models import RegisteredModel as M; print(M.objects.get(name='smollm2-alt').pk)").strip()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)

    done = admin.post(
        "/admin/models_registry/registeredmodel/",
        data={"action": "load", "_selected_action": pk, "csrfmiddlewaretoken": token, "index": "0"},
        follow_redirects=True,
    )

    assert "Loading smollm2-alt" in done.text
    fleet.wait_until(lambda: any(deployment(fleet, "smollm2-alt", n).get("state") == "ready" for n in ("n1", "n2")), 60, "ready")
    time.sleep(0.7)
    where = served_by(fleet, "smollm2-alt")
    assert deployment(fleet, "smollm2-alt", where)["state"] == "ready"
    unload(fleet, "smollm2-alt", where)


def test_reload_under_load_fails_no_request(fleet):
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def client() -> None:
        nonlocal served
        while not stop.is_set():
            body = {"model": "smollm2", "messages": CHAT, "max_tokens": 12, "stream": True}
            with httpx.stream("POST", f"{fleet.gateways['gw-a']}/v1/chat/completions", json=body, headers=fleet.auth, timeout=60) as r:
                lines = [l for l in r.iter_lines() if l.startswith("data: ")]
            if r.status_code != 200 or lines[-1] != "data: [DONE]" or any('"error"' in l for l in lines):
                failures.append(f"{r.status_code} {lines[-2:] if lines else r.read()}")
            served += 1

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    before = fleet.api("GET", "/v1/deployments").json()["data"]
    ready_at = deployment(fleet, "smollm2", "n1")["ready_at"]

    assert fleet.api("POST", "/v1/models/smollm2/reload").status_code == 202
    fleet.wait_until(lambda: deployment(fleet, "smollm2", "n1")["ready_at"] != ready_at, 60, "reload to finish")
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()

    assert before and served > 4
    assert failures == []
    assert deployment(fleet, "smollm2", "n1")["state"] == "ready"


def test_unload_lets_in_flight_finish_then_the_model_is_unavailable(fleet):
    assert fleet.api("POST", "/v1/models", json={"id": "smollm2-alt", "node": "n2"}).status_code == 202
    wait_state(fleet, "smollm2-alt", "n2", "ready")
    time.sleep(0.7)
    result: dict = {}

    def long_stream() -> None:
        body = {"model": "smollm2-alt", "messages": CHAT, "max_tokens": 120, "stream": True, "logit_bias": NO_EOS}
        with httpx.stream("POST", f"{fleet.gateways['gw-a']}/v1/chat/completions", json=body, headers=fleet.auth, timeout=60) as r:
            result["lines"] = [l for l in r.iter_lines() if l.startswith("data: ")]

    t = threading.Thread(target=long_stream)
    t.start()
    time.sleep(1.0)
    assert fleet.api("DELETE", "/v1/models/smollm2-alt").status_code == 200
    t.join()
    wait_state(fleet, "smollm2-alt", "n2", "unloaded")
    time.sleep(0.7)

    assert result["lines"][-1] == "data: [DONE]" and not any('"error"' in l for l in result["lines"])
    gone = fleet.chat(model="smollm2-alt")
    assert gone.status_code == 503 and gone.json()["error"]["type"] == "service_unavailable"


def test_idle_eviction_unloads_an_unused_model_and_keeps_a_pinned_one(fleet):
    path = _bundled_path(fleet)
    for name, pinned in (("smollm2-idle", False), ("smollm2-pinned", True)):
        body = {"id": name, "path": path, "node": "n2", "idle_ttl_seconds": 2, "pinned": pinned, "embeddings": False, "n_ctx": 512}
        assert fleet.api("POST", "/v1/models", json=body).status_code == 202
        wait_state(fleet, name, "n2", "ready")

    wait_state(fleet, "smollm2-idle", "n2", "unloaded", timeout=20)

    assert deployment(fleet, "smollm2-pinned", "n2")["state"] == "ready"
    audit = fleet.manage("shell", "-c", "from audit.models import AuditEvent; print(AuditEvent.objects.filter(action='deployment.evicted').count())")
    assert audit.strip() == "1"


def test_bad_lifecycle_requests_get_clear_4xx_and_change_nothing(fleet):
    count = lambda: fleet.manage("shell", "-c", "from models_registry.models import *; print(RegisteredModel.objects.count(), Deployment.objects.count())")
    before = count()

    outside = fleet.api("POST", "/v1/models", json={"id": "evil", "path": "/etc/passwd"})
    not_gguf = fleet.api("POST", "/v1/models", json={"id": "junk", "path": str(fleet.models_dir / "readme.gguf")})
    dotdot = fleet.api("POST", "/v1/models", json={"id": "up", "path": str(fleet.models_dir / ".." / ".." / "etc" / "passwd")})
    no_node = fleet.api("POST", "/v1/models", json={"id": "smollm2", "node": "nope"})
    no_model = fleet.api("POST", "/v1/models", json={"id": "ghost", "node": "n1"})
    no_key = httpx.post(f"{fleet.gateways['gw-a']}/v1/models", json={"id": "smollm2"})

    assert [r.status_code for r in (outside, not_gguf, dotdot, no_node, no_model, no_key)] == [400, 400, 400, 404, 404, 401]
    assert outside.json()["error"]["param"] == "path" and "outside the allowed" in outside.json()["error"]["message"]
    assert "not a GGUF" in not_gguf.json()["error"]["message"]
    assert no_node.json()["error"]["code"] == "node_not_found"
    assert count() == before


def test_killing_the_node_during_a_load_leaves_the_deployment_failed(fleet):
    fleet.kill("n2", signal.SIGSTOP)  # frozen: the load task waits in its queue, heartbeats stop
    try:
        assert fleet.api("POST", "/v1/models", json={"id": "smollm2-alt", "node": "n2"}).status_code in (202, 409)
    finally:
        fleet.kill("n2", signal.SIGKILL)

    took = wait_state(fleet, "smollm2-alt", "n2", "failed", timeout=15)

    assert took <= 2 + 1 + 2  # node TTL + sweep interval + slack
    assert "n2 stopped heartbeating" in deployment(fleet, "smollm2-alt", "n2")["error"]
