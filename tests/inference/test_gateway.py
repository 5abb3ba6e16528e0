"""Gateway behaviour a client sees around the answer: ids, overhead, health, cancellation."""

import time

import httpx

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Count to fifty."}]}
# Bans SmolLM2's end tokens (<|endoftext|>, <|im_end|>) so a generation runs to max_tokens.
NO_EOS = {"0": -100, "2": -100}


def test_request_id_is_echoed_or_minted_and_overhead_reported(http):
    echoed = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2}, headers={"X-Request-ID": "my-trace-42"})
    minted = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})

    assert echoed.headers["X-Request-ID"] == "my-trace-42"
    assert echoed.json()["id"] == "chatcmpl-my-trace-42"
    assert len(minted.headers["X-Request-ID"]) == 32
    assert float(minted.headers["x-gateway-overhead-ms"]) >= 0


def test_health_reports_ok_with_the_servable_model(server):
    response = httpx.get(f"{server.base_url}/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["models"] == ["smollm2"]
    assert body["checks"] == {"database": "ok", "redis": "ok"}
    assert response.headers["X-Request-ID"]


def test_client_that_disconnects_mid_stream_frees_the_node(http, server):
    # given a long generation that the client abandons after the first chunks
    long_stream = {**CHAT, "max_tokens": 1500, "stream": True, "logit_bias": NO_EOS}
    with http.stream("POST", "/v1/chat/completions", json=long_stream) as response:
        for i, _ in enumerate(response.iter_lines()):
            if i >= 4:
                break
    abandoned_at = time.monotonic()

    # when the next request arrives, it is served at once rather than after 1500 tokens
    quick = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 4, "temperature": 0})

    assert quick.status_code == 200
    assert time.monotonic() - abandoned_at < 5.0


def test_stream_ends_with_done_marker(http):
    with http.stream("POST", "/v1/completions", json={"model": "smollm2", "prompt": "Hi", "max_tokens": 5, "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line]

    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"


def test_logit_bias_can_forbid_the_end_token(http):
    response = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 40, "logit_bias": NO_EOS, "temperature": 0})

    assert response.json()["usage"]["completion_tokens"] == 40
    assert response.json()["choices"][0]["finish_reason"] == "length"
