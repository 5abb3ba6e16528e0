"""Relaying a node's stream when the node fails mid-way (a stub node: only the relay is under test)."""

import asyncio

import orjson
import pytest
from aiohttp import web

from inference import client
from inference.services import _relay


@pytest.fixture(autouse=True)
async def close_client():
    yield
    await client.aclose()


async def start_stub(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/internal/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


async def collect(address: str) -> bytes:
    response = await client.post(address, "/internal/v1/chat/completions", b"{}", request_id="r1")
    return b"".join([chunk async for chunk in _relay(response, "r1")])


async def test_node_dying_mid_stream_ends_with_error_event_then_done():
    async def dies(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": []}\n\n')
        request.transport.close()  # the node process dies
        return response

    runner, address = await start_stub(dies)
    try:
        body = await asyncio.wait_for(collect(address), timeout=10)
    finally:
        await runner.cleanup()

    events = [line[6:] for line in body.decode().split("\n\n") if line.startswith("data: ")]
    assert events[0] == '{"choices": []}'
    assert "error" in orjson.loads(events[-2])
    assert events[-1] == "[DONE]"


async def test_complete_stream_is_passed_through_unchanged():
    payload = b'data: {"a": 1}\n\ndata: {"a": 2}\n\ndata: [DONE]\n\n'

    async def fine(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for part in (payload[:10], payload[10:30], payload[30:]):
            await response.write(part)
        await response.write_eof()
        return response

    runner, address = await start_stub(fine)
    try:
        body = await asyncio.wait_for(collect(address), timeout=10)
    finally:
        await runner.cleanup()

    assert body == payload


async def test_usage_comment_reaches_the_completion_hook():
    payload = b'data: {"a": 1}\n\n: usage {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}\n\ndata: [DONE]\n\n'

    async def fine(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(payload)
        await response.write_eof()
        return response

    from inference.services import Outcome

    seen: list[Outcome] = []
    runner, address = await start_stub(fine)
    try:
        response = await client.post(address, "/internal/v1/chat/completions", b"{}", request_id="r1")
        outcome = Outcome(model="m", node="n", status=200, usage=None)
        body = b"".join([chunk async for chunk in _relay(response, "r1", outcome, seen.append)])
    finally:
        await runner.cleanup()

    assert body == payload
    assert seen[0].usage == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
