"""WebSocket inference through Channels' communicator: the real ASGI app, routed to a stub node."""

import asyncio

import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from axserving import metrics
from axserving.asgi import application
from fleet import dispatch
from inference import admission

from .conftest import make_key, register_stub

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "stubmodel", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def connect(key: str | None = None) -> WebsocketCommunicator:
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    communicator = WebsocketCommunicator(application, "/v1/realtime/completions", headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    if key:
        assert await communicator.receive_json_from() == {"type": "auth.ok"}
    return communicator


async def until_done(communicator: WebsocketCommunicator) -> list[dict]:
    messages = []
    while True:
        message = await communicator.receive_json_from(timeout=5)
        messages.append(message)
        if message.get("type") == "done" or "error" in message:
            return messages


@pytest.fixture
async def setup(stub_node):
    await sync_to_async(register_stub)(stub_node.address)
    key = await sync_to_async(make_key)("inference")
    return stub_node, key


async def test_it_streams_chunks_then_done(setup):
    stub, key = setup
    ws = await connect(key)

    await ws.send_json_to(CHAT)
    messages = await until_done(ws)

    assert [m["choices"][0]["delta"]["content"] for m in messages[:-1]] == ["t0", "t1", "t2"]
    assert messages[-1]["type"] == "done" and messages[-1]["cancelled"] is False
    assert stub.seen[0]["stream"] is True  # a socket always streams
    await ws.disconnect()


async def test_it_serves_two_requests_in_sequence_on_one_socket(setup):
    stub, key = setup
    ws = await connect(key)

    await ws.send_json_to({**CHAT, "request_id": "first"})
    first = await until_done(ws)
    await ws.send_json_to({**CHAT, "request_id": "second"})
    second = await until_done(ws)

    assert first[-1] == {"type": "done", "request_id": "first", "cancelled": False}
    assert second[-1] == {"type": "done", "request_id": "second", "cancelled": False}
    assert len(stub.seen) == 2
    await ws.disconnect()


async def test_cancel_stops_generation_and_frees_the_slot(setup):
    stub, key = setup
    stub.tokens, stub.delay = 1000, 0.02
    ws = await connect(key)
    await ws.send_json_to(CHAT)
    await ws.receive_json_from(timeout=5)  # generation is under way

    await ws.send_json_to({"type": "cancel"})
    done = await until_done(ws)

    assert done[-1]["type"] == "done" and done[-1]["cancelled"] is True
    await asyncio.wait_for(stub.cancelled.wait(), timeout=2)  # the node saw the connection close
    assert admission.gate("stubmodel").active == 0
    assert dispatch._local_inflight["stub"] == 0
    # the socket is still usable afterwards
    stub.tokens, stub.delay = 2, 0
    await ws.send_json_to(CHAT)
    assert (await until_done(ws))[-1]["type"] == "done"
    await ws.disconnect()


async def test_bad_json_gets_an_error_envelope_and_the_socket_stays_open(setup):
    _, key = setup
    ws = await connect(key)

    await ws.send_to(text_data="{not json")
    error = await ws.receive_json_from()
    await ws.send_json_to({"model": "stubmodel", "messages": [], "max_tokens": 4})
    invalid = await ws.receive_json_from()
    await ws.send_json_to(CHAT)
    after = await until_done(ws)

    assert error["error"]["code"] == "invalid_json" and error["error"]["type"] == "invalid_request_error"
    assert invalid["error"]["param"] == "messages"
    assert after[-1]["type"] == "done"
    await ws.disconnect()


async def test_unknown_model_is_a_404_envelope(setup):
    _, key = setup
    ws = await connect(key)

    await ws.send_json_to({**CHAT, "model": "nope"})
    error = await ws.receive_json_from()

    assert error["error"]["code"] == "model_not_found" and error["error"]["type"] == "not_found_error"
    await ws.disconnect()


async def test_it_authenticates_with_a_first_message_when_no_header_is_sent(setup):
    _, key = setup
    ws = await connect()

    await ws.send_json_to(CHAT)
    refused = await ws.receive_json_from()
    await ws.send_json_to({"type": "auth", "api_key": key})
    accepted = await ws.receive_json_from()
    await ws.send_json_to(CHAT)
    answered = await until_done(ws)

    assert refused["error"]["type"] == "authentication_error"
    assert accepted == {"type": "auth.ok"}
    assert answered[-1]["type"] == "done"
    await ws.disconnect()


async def test_a_key_without_inference_scope_is_refused(setup):
    admin_only = await sync_to_async(make_key)("admin", name="admin-only")
    ws = await connect()

    await ws.send_json_to({"type": "auth", "api_key": admin_only})
    refused = await ws.receive_json_from()

    assert refused["error"]["type"] == "permission_error"
    await ws.disconnect()


async def test_a_second_request_while_one_runs_is_refused_without_disturbing_it(setup):
    stub, key = setup
    stub.tokens, stub.delay = 5, 0.05
    ws = await connect(key)

    await ws.send_json_to(CHAT)
    await ws.receive_json_from(timeout=5)
    await ws.send_json_to(CHAT)
    messages = await until_done(ws)  # the conflict error arrives among the first request's chunks
    rest = [] if messages[-1].get("type") == "done" else await until_done(ws)

    assert any(m.get("error", {}).get("code") == "request_in_progress" for m in messages)
    assert (messages + rest)[-1]["type"] == "done"
    await ws.disconnect()


async def test_socket_requests_are_counted_in_the_serving_metrics(setup):
    _, key = setup
    before = metrics.REGISTRY.get_sample_value(
        "axs_requests_total", {"endpoint": "realtime/chat/completions", "model": "stubmodel", "project": "default", "status": "200"}
    ) or 0
    ws = await connect(key)

    await ws.send_json_to(CHAT)
    await until_done(ws)
    await ws.disconnect()

    after = metrics.REGISTRY.get_sample_value(
        "axs_requests_total", {"endpoint": "realtime/chat/completions", "model": "stubmodel", "project": "default", "status": "200"}
    )
    assert after == before + 1
    assert orjson.loads(orjson.dumps(metrics.snapshot()))["tokens"]["completion"] >= 3
