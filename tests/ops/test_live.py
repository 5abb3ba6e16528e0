"""Against the running all-in-one (`manage.py serve`): WebSocket inference on the real node and
the dashboard in headless Chromium."""

import asyncio
import os
import subprocess
import sys
import tempfile
import time

import aiohttp
import httpx
import orjson
import pytest

from tests.conftest import ARTIFACTS, ROOT

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Tell me about rivers."}]}
NO_EOS = {"0": -100, "2": -100}  # SmolLM2's end tokens banned: generations run to max_tokens


def ws_url(server) -> str:
    return server.base_url.replace("http://", "ws://") + "/v1/realtime/completions"


async def until_done(ws: aiohttp.ClientWebSocketResponse) -> list[dict]:
    messages = []
    while True:
        message = orjson.loads(await asyncio.wait_for(ws.receive_str(), timeout=60))
        messages.append(message)
        if message.get("type") == "done" or "error" in message:
            return messages


def node_inflight(server, key: str) -> int:
    body = httpx.get(f"{server.base_url}/v1/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
    return body["nodes"][0]["inflight"] + body["nodes"][0]["queued"]


@pytest.fixture(scope="module")
def admin_key(server) -> str:
    return server.manage("keys", "create", "ops-admin", "--scope", "admin", "--scope", "inference").strip()


def test_realtime_socket_streams_cancels_and_survives_bad_json(server, api_key, admin_key):
    async def scenario() -> dict:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(ws_url(server), headers={"Authorization": f"Bearer {api_key}"}) as ws:
                assert orjson.loads(await ws.receive_str()) == {"type": "auth.ok"}
                await ws.send_str(orjson.dumps({**CHAT, "max_tokens": 6}).decode())
                first = await until_done(ws)
                await ws.send_str(orjson.dumps({**CHAT, "max_tokens": 4, "stream_options": {"include_usage": True}}).decode())
                second = await until_done(ws)
                await ws.send_str("{this is not json")
                bad = orjson.loads(await ws.receive_str())
                # a long generation, cancelled after its first chunks
                await ws.send_str(orjson.dumps({**CHAT, "max_tokens": 1500, "logit_bias": NO_EOS}).decode())
                for _ in range(3):
                    await ws.receive_str()
                waited = time.monotonic()
                while not (busy := node_inflight(server, admin_key)) and time.monotonic() - waited < 5:
                    await asyncio.sleep(0.2)  # the node reports its load with its next heartbeat
                cancelled_at = time.monotonic()
                await ws.send_str('{"type": "cancel"}')
                cancelled = await until_done(ws)
                while node_inflight(server, admin_key) and time.monotonic() - cancelled_at < 10:
                    await asyncio.sleep(0.2)
                freed_after = time.monotonic() - cancelled_at
                await ws.send_str(orjson.dumps({**CHAT, "max_tokens": 3}).decode())
                after = await until_done(ws)
                return dict(first=first, second=second, bad=bad, busy=busy, cancelled=cancelled, freed_after=freed_after, after=after, closed=ws.closed)

    r = asyncio.run(scenario())

    chunks = [m for m in r["first"] if m.get("object") == "chat.completion.chunk"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert r["first"][-1]["type"] == "done"
    assert r["second"][-2]["usage"]["completion_tokens"] == 4  # the same usage chunk SSE sends
    assert r["bad"]["error"]["code"] == "invalid_json"
    assert r["busy"] >= 1
    assert r["cancelled"][-1] == {"type": "done", "request_id": r["cancelled"][-1]["request_id"], "cancelled": True}
    assert r["freed_after"] < 5, "the node kept decoding after the cancel"
    assert r["after"][-1]["type"] == "done" and not r["closed"]


def test_dashboard_updates_live_in_a_real_browser(server, api_key, admin_key):
    from playwright.sync_api import expect, sync_playwright

    env = {**server.env, "DJANGO_SUPERUSER_PASSWORD": "dash-pass-123"}
    subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", "operator", "--email", "op@example.com"],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )
    admin = {"Authorization": f"Bearer {admin_key}"}
    node = httpx.get(f"{server.base_url}/v1/workers", headers=admin, timeout=10).json()["data"][0]
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        browser = p.chromium.launch_persistent_context(
            profile, executable_path=os.environ.get("AXS_CHROMIUM", "/usr/bin/chromium"), headless=True, args=args,
            viewport={"width": 1400, "height": 1100},
        )
        try:
            page = browser.new_page()
            page.goto(f"{server.base_url}/dashboard")
            page.fill("#id_username", "operator")  # the admin's login form, then back to the dashboard
            page.fill("#id_password", "dash-pass-123")
            page.click("input[type=submit]")
            page.wait_for_url("**/dashboard")
            expect(page.locator("#conn")).to_have_text("live", timeout=10_000)
            expect(page.locator("#gateways")).to_have_text("1", timeout=5_000)
            before = int(page.inner_text("#total-requests"))
            tokens_before = int(page.inner_text("#total-tokens"))
            row = page.locator(f"#node-{node['id']}")
            expect(row).to_contain_text("ready")

            # when: traffic, then a node event (drain, shown from its next heartbeat), with no reload
            for _ in range(3):
                with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json={**CHAT, "max_tokens": 5, "stream": True},
                                  headers={"Authorization": f"Bearer {api_key}"}, timeout=60) as streamed:
                    assert streamed.status_code == 200 and streamed.read().endswith(b"data: [DONE]\n\n")
            started = time.monotonic()
            page.wait_for_function(f"Number(document.getElementById('total-requests').textContent) >= {before + 3}", timeout=5_000)
            seen_requests_after = time.monotonic() - started
            charted = page.evaluate("(() => { const s = axsDashboard.series(); return [s.rps.reduce((a, b) => a + b, 0), s.p95.filter(x => x !== null).length]; })()")
            httpx.post(f"{server.base_url}/v1/workers/{node['id']}/drain", headers=admin, timeout=10).raise_for_status()
            drained_at = time.monotonic()
            expect(row.locator(".state")).to_have_text("drained", timeout=5_000)
            seen_drain_after = time.monotonic() - drained_at
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            httpx.post(f"{server.base_url}/v1/workers/{node['id']}/undrain", headers=admin, timeout=10).raise_for_status()
            expect(row.locator(".state")).to_have_text("ready", timeout=5_000)

            # then: new numbers arrived over the socket, never by reloading
            assert int(page.inner_text("#total-tokens")) > tokens_before
            assert page.inner_text("#ttft").endswith(" ms")  # TTFT of the streamed requests, last minute
            assert page.locator(f"#deployments tr[data-node='{node['id']}'] .pct").inner_text() == "100%"
            assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
            assert seen_requests_after < 2.5 and seen_drain_after < 4
            assert charted[0] >= 3 and charted[1] >= 1, charted  # the requests and their TTFT are on the charts
            link = page.locator(f"#node-{node['id']} a").get_attribute("href")
            assert link == f"/admin/fleet/node/{node['id']}/change/"
            page.goto(f"{server.base_url}/admin/fleet/node/")
            expect(page.locator("td.field-state").first).to_have_text("ready")
            page.goto(f"{server.base_url}/dashboard")
            expect(page.locator("#conn")).to_have_text("live", timeout=10_000)
        finally:
            browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
