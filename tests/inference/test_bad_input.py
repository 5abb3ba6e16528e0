"""Malformed requests get the documented status and the OpenAI envelope; the server keeps answering."""

import httpx
import pytest

OK_MESSAGES = [{"role": "user", "content": "hi"}]
LONG_PROMPT = "word " * 5000  # well past the 2048-token context


def chat(**fields):
    return {"model": "smollm2", "messages": OK_MESSAGES, "max_tokens": 4, **fields}


CASES = [
    # (id, path, json body or raw bytes, status, error type, param)
    ("messages-none", "/v1/chat/completions", chat(messages=None), 400, "invalid_request_error", "messages"),
    ("messages-string", "/v1/chat/completions", chat(messages="string"), 400, "invalid_request_error", "messages"),
    ("messages-int-item", "/v1/chat/completions", chat(messages=[123]), 400, "invalid_request_error", "messages[0]"),
    ("messages-empty-item", "/v1/chat/completions", chat(messages=[{}]), 400, "invalid_request_error", "messages[0].role"),
    ("role-int", "/v1/chat/completions", chat(messages=[{"role": 123}]), 400, "invalid_request_error", "messages[0].role"),
    ("messages-empty-list", "/v1/chat/completions", chat(messages=[]), 400, "invalid_request_error", "messages"),
    ("content-missing", "/v1/chat/completions", chat(messages=[{"role": "user"}]), 400, "invalid_request_error", "messages[0].content"),
    ("content-wrong-type", "/v1/chat/completions", chat(messages=[{"role": "user", "content": 5}]), 400, "invalid_request_error", "messages[0].content"),
    ("temperature-5", "/v1/chat/completions", chat(temperature=5), 400, "invalid_request_error", "temperature"),
    ("temperature-string", "/v1/chat/completions", chat(temperature="hot"), 400, "invalid_request_error", "temperature"),
    ("max-tokens-0", "/v1/chat/completions", chat(max_tokens=0), 400, "invalid_request_error", "max_tokens"),
    ("max-tokens-string", "/v1/chat/completions", chat(max_tokens="many"), 400, "invalid_request_error", "max_tokens"),
    ("top-p-2", "/v1/chat/completions", chat(top_p=2), 400, "invalid_request_error", "top_p"),
    ("stop-too-many", "/v1/chat/completions", chat(stop=["a", "b", "c", "d", "e"]), 400, "invalid_request_error", "stop"),
    ("stop-int", "/v1/chat/completions", chat(stop=7), 400, "invalid_request_error", "stop"),
    ("n-0", "/v1/chat/completions", chat(n=0), 400, "invalid_request_error", "n"),
    ("logit-bias-bad-key", "/v1/chat/completions", chat(logit_bias={"abc": 1}), 400, "invalid_request_error", "logit_bias"),
    ("model-missing", "/v1/chat/completions", {"messages": OK_MESSAGES}, 400, "invalid_request_error", "model"),
    ("unknown-model", "/v1/chat/completions", chat(model="no-such-model"), 404, "not_found_error", "model"),
    ("invalid-json", "/v1/chat/completions", b'{"model": "smollm2", "messages": [', 400, "invalid_request_error", None),
    ("json-array-body", "/v1/chat/completions", b"[1, 2]", 400, "invalid_request_error", None),
    ("prompt-too-long", "/v1/chat/completions", chat(messages=[{"role": "user", "content": LONG_PROMPT}]), 400, "invalid_request_error", "messages"),
    ("completion-prompt-too-long", "/v1/completions", {"model": "smollm2", "prompt": LONG_PROMPT}, 400, "invalid_request_error", "prompt"),
    ("completion-prompt-missing", "/v1/completions", {"model": "smollm2"}, 400, "invalid_request_error", "prompt"),
    ("completion-logprobs-9", "/v1/completions", {"model": "smollm2", "prompt": "x", "logprobs": 9}, 400, "invalid_request_error", "logprobs"),
    ("completion-bad-token", "/v1/completions", {"model": "smollm2", "prompt": [10**9]}, 400, "invalid_request_error", "prompt"),
    ("embedding-empty-input", "/v1/embeddings", {"model": "smollm2", "input": []}, 400, "invalid_request_error", "input"),
    ("embedding-bad-format", "/v1/embeddings", {"model": "smollm2", "input": "x", "encoding_format": "hex"}, 400, "invalid_request_error", "encoding_format"),
    ("embedding-wrong-dimensions", "/v1/embeddings", {"model": "smollm2", "input": "x", "dimensions": 12}, 400, "invalid_request_error", "dimensions"),
    ("embedding-too-long", "/v1/embeddings", {"model": "smollm2", "input": LONG_PROMPT}, 400, "invalid_request_error", "input"),
    ("huge-body", "/v1/chat/completions", b'{"model": "smollm2", "pad": "' + b"x" * (5 * 1024 * 1024) + b'"}', 413, "invalid_request_error", None),
]


def assert_envelope(response: httpx.Response, status: int, err_type: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == err_type
    assert error["message"]
    assert isinstance(error["code"], str)
    return error


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_documented_status_and_envelope(http, case):
    _, path, body, status, err_type, param = case

    if isinstance(body, bytes):
        response = http.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        response = http.post(path, json=body)

    error = assert_envelope(response, status, err_type)
    assert error["param"] == param
    assert response.headers["X-Request-ID"]


def test_prompt_longer_than_context_is_named_context_length_exceeded(http):
    response = http.post("/v1/chat/completions", json=chat(messages=[{"role": "user", "content": LONG_PROMPT}], stream=True))

    assert assert_envelope(response, 400, "invalid_request_error")["code"] == "context_length_exceeded"


def test_missing_key_gets_401_with_www_authenticate(server):
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=chat())

    assert_envelope(response, 401, "authentication_error")
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Bearer sk-axs-not-a-real-key", "Basic dXNlcjpwYXNz", "Bearer", "sk-axs-no-scheme"])
def test_wrong_key_gets_401(server, header):
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=chat(), headers={"Authorization": header})

    assert_envelope(response, 401, "authentication_error")


def test_unknown_route_and_wrong_method_get_envelopes(http):
    assert_envelope(http.get("/v1/nothing-here"), 404, "not_found_error")
    response = http.get("/v1/chat/completions")
    assert_envelope(response, 405, "invalid_request_error")
    assert response.headers["Allow"] == "POST"


def test_unknown_model_lookup_is_404(http):
    assert assert_envelope(http.get("/v1/models/nope"), 404, "not_found_error")["code"] == "model_not_found"


def test_server_keeps_answering_after_bad_input(http):
    for _, path, body, *_ in CASES:
        if isinstance(body, bytes):
            http.post(path, content=body)
        else:
            http.post(path, json=body)

    response = http.post("/v1/chat/completions", json=chat())

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"]
    assert http.get("/health").json()["status"] == "ok"
