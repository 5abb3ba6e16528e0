"""The node's internal HTTP endpoint over the batching engine (real model, aiohttp test client)."""

import asyncio
import time

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from inference.node.engine import ModelSpec, ModelWorker
from inference.node.server import NodeApp
from models_registry.services import bundled_model_path

TOKEN = "node-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENDLESS = {"max_tokens": 300, "logit_bias": {"0": -100, "2": -100}}  # SmolLM2's end tokens banned


@pytest.fixture(scope="module")
def worker():
    worker = ModelWorker(ModelSpec(name="m", path=bundled_model_path(), n_ctx=512, embeddings=False, slots=2), queue_depth=2)
    worker.load()
    yield worker
    worker.stop()


@pytest.fixture
async def node(worker):
    client = TestClient(TestServer(NodeApp(name="n", token=TOKEN, workers={"m": worker}).build()))
    await client.start_server()
    yield client
    await client.close()


async def settled(worker, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while worker.inflight or worker.queued:
        assert time.monotonic() < deadline, "the engine kept working on abandoned requests"
        await asyncio.sleep(0.02)


def sse_events(body: bytes) -> list[bytes]:
    return [block for block in body.split(b"\n\n") if block]


async def test_stream_of_two_choices_ends_with_usage_comment_then_done(node):
    body = {"model": "m", "prompt": ["Water boils at"], "n": 2, "max_tokens": 5, "temperature": 0.7, "seed": 3, "stream": True}

    response = await node.post("/internal/v1/completions", json=body, headers=AUTH)
    events = sse_events(await response.read())

    assert response.status == 200
    assert events[-1] == b"data: [DONE]"
    assert events[-2].startswith(b": usage ")
    usage = orjson.loads(events[-2][len(b": usage ") :])
    assert usage["completion_tokens"] == 10
    chunks = [orjson.loads(e[6:]) for e in events[:-2]]
    finishes = {c["choices"][0]["index"]: c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]}
    assert finishes == {0: "length", 1: "length"}


async def test_chat_logprobs_list_each_token_with_alternatives(node):
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 4,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }

    response = await node.post("/internal/v1/chat/completions", json=body, headers=AUTH)
    choice = (await response.json())["choices"][0]

    entries = choice["logprobs"]["content"]
    assert "".join(e["token"] for e in entries) == choice["message"]["content"]
    assert all(len(e["top_logprobs"]) == 2 and e["logprob"] <= 0 for e in entries)


async def test_a_client_leaving_mid_stream_frees_its_slot(node, worker):
    body = {"model": "m", "prompt": ["Once upon a time"], "stream": True, **ENDLESS}

    response = await node.post("/internal/v1/completions", json=body, headers=AUTH)
    await response.content.readuntil(b"\n\n")
    response.close()

    await settled(worker)


async def test_a_full_queue_answers_429_with_retry_after(node, worker):
    body = {"model": "m", "prompt": ["Once upon a time"], "stream": True, **ENDLESS}
    streams = [await node.post("/internal/v1/completions", json=body, headers=AUTH) for _ in range(2)]
    for stream in streams:  # both slots busy: each has produced a token, so neither still waits in the queue
        await stream.content.readuntil(b"\n\n")
    waiting = [await node.post("/internal/v1/completions", json=body, headers=AUTH) for _ in range(2)]
    assert [w.status for w in waiting] == [200, 200]
    assert worker.queued == 2

    refused = await node.post("/internal/v1/completions", json=body, headers=AUTH)

    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    assert (await refused.json())["error"]["code"] == "node_queue_full"
    for stream in streams + waiting:
        stream.close()
    await settled(worker)
