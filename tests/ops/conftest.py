"""Fixtures for the operator-view tests: a stub node the gateway can route to, and fresh caches."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web
from django.utils import timezone

from axserving.access import selectors as key_selectors
from axserving.access.services import create_api_key
from fleet import dispatch
from fleet.models import Node
from inference import admission, client
from models_registry.models import Deployment, ModelFile, RegisteredModel


@dataclass
class StubNode:
    """An aiohttp stand-in for a node's internal endpoint: streams `tokens` chunks `delay` apart."""

    address: str = ""
    tokens: int = 3
    delay: float = 0.0
    seen: list[dict] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.started.set()
        try:
            for i in range(self.tokens):
                chunk = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": f"t{i}"}, "finish_reason": None}]}
                await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                await asyncio.sleep(self.delay)
            await response.write(b': usage {"prompt_tokens": 5, "completion_tokens": %d, "total_tokens": %d}\n\n' % (self.tokens, self.tokens + 5))
            await response.write(b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled.set()  # the gateway closed the connection: a real node frees the slot here
            raise
        return response


@pytest.fixture
def fresh_caches(_close_worker_thread_connections) -> Iterator[None]:  # type: ignore[no-untyped-def]
    dispatch._table = None
    dispatch._local_inflight.clear()
    dispatch._failures.clear()
    dispatch._ejected_until.clear()
    admission._gates.clear()
    key_selectors.forget_cached_keys()
    yield
    dispatch._table = None
    admission._gates.clear()


@pytest.fixture
async def stub_node(fresh_caches) -> AsyncIterator[StubNode]:
    stub = StubNode()
    app = web.Application()
    app.router.add_post("/internal/v1/chat/completions", stub.chat)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stub.address = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    yield stub
    await client.aclose()
    await runner.cleanup()


def register_stub(address: str, *, name: str = "stub", model: str = "stubmodel", slots: int = 2) -> Node:
    """A ready node serving `model` at `address`, as the routing table reads it."""
    now = timezone.now()
    model_file = ModelFile.objects.create(sha256=model.ljust(64, "0"), path=f"/models/{model}.gguf", size_bytes=1, mtime=0)
    registered = RegisteredModel.objects.create(name=model, file=model_file)
    node = Node.objects.create(
        name=name, address=address, status=Node.Status.READY, started_at=now, last_heartbeat=now, slots=slots
    )
    Deployment.objects.create(model=registered, node=node, state=Deployment.State.READY, progress=100, updated_at=now)
    return node


def make_key(*scopes: str, name: str = "ops-test") -> str:
    return create_api_key(name=name, scopes=list(scopes) or ["inference"])[1]

