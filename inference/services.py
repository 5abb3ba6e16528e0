"""The inference hot path: route a validated request to a node and relay its answer."""

import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from django.http import HttpResponse, StreamingHttpResponse

from axserving.errors import ServiceUnavailable
from fleet import dispatch

from . import client

logger = logging.getLogger(__name__)

# Retry once on another node when the first one fails before answering.
_ATTEMPTS = 2
_DONE = b"data: [DONE]\n\n"
_PASS_HEADERS = ("Retry-After",)
_USAGE = re.compile(rb": usage (\{[^\n]*\})\n")


@dataclass(slots=True)
class Outcome:
    """How a forwarded request ended, for usage accounting."""

    model: str
    node: str
    status: int
    usage: dict[str, int] | None


OnComplete = Callable[[Outcome], None]


def _usage_in(data: bytes) -> dict[str, int] | None:
    match = _USAGE.search(data)
    return orjson.loads(match.group(1)) if match else None


def _stream_error(message: str, code: str) -> bytes:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n" + _DONE


async def _relay(
    response: aiohttp.ClientResponse, request_id: str, outcome: Outcome | None = None, on_complete: OnComplete | None = None
) -> AsyncIterator[bytes]:
    """Pass the node's SSE bytes through; end with an error event if the node stops mid-way."""
    tail = b""
    try:
        async for chunk in response.content.iter_any():
            tail = (tail + chunk)[-1024:]  # holds the usage comment and [DONE] at the end
            yield chunk
        if not tail.endswith(_DONE):
            logger.warning("Node stream ended early", extra={"request_id": request_id})
            yield _stream_error("The node ended the stream early.", "node_stream_ended")
    except (aiohttp.ClientError, TimeoutError) as exc:
        logger.warning("Node stream failed: %s", exc, extra={"request_id": request_id})
        yield _stream_error("The node stopped answering mid-stream.", "node_stream_failed")
    finally:
        # close(), not release(): an unfinished stream must drop the connection so the node cancels.
        response.close()
        if outcome is not None and on_complete is not None:
            outcome.usage = _usage_in(tail)
            on_complete(outcome)


def _plain(response: aiohttp.ClientResponse, body: bytes) -> HttpResponse:
    out = HttpResponse(body, status=response.status, content_type=response.headers.get("Content-Type", "application/json"))
    for name in _PASS_HEADERS:
        if name in response.headers:
            out[name] = response.headers[name]
    return out


async def aforward(
    *, request: Any, endpoint: str, payload: dict[str, Any], stream: bool, on_complete: OnComplete | None = None
) -> HttpResponse:
    """Pick a ready node for payload['model'], forward, and return the node's answer (retry once before the first byte)."""
    table = await dispatch.aget_routing_table()
    view = dispatch.resolve_model(table, str(payload["model"]))
    payload["model"] = view.name
    body = orjson.dumps(payload)
    tried: set[str] = set()
    started = time.perf_counter()
    last_error: Exception | None = None
    for _ in range(_ATTEMPTS):
        try:
            route = dispatch.pick_route(view, exclude=frozenset(tried))
        except ServiceUnavailable:
            if last_error is None:
                raise
            break
        tried.add(route.node)
        try:
            response = await client.post(route.address, f"/internal/v1/{endpoint}", body, request_id=request.request_id)
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("Node %s unreachable: %s", route.node, exc, extra={"request_id": request.request_id})
            last_error = exc
            continue
        if response.status >= 500:
            await response.read()
            response.release()
            last_error = RuntimeError(f"node {route.node} answered {response.status}")
            continue
        if stream and response.status == 200:
            request.node_seconds = time.perf_counter() - started
            outcome = Outcome(model=view.name, node=route.node, status=200, usage=None)
            relay = _relay(response, request.request_id, outcome, on_complete)
            out = StreamingHttpResponse(relay, content_type="text/event-stream")
            out["Cache-Control"] = "no-cache"
            out["X-Accel-Buffering"] = "no"
            return out
        try:
            data = await response.read()
        finally:
            response.release()
        request.node_seconds = time.perf_counter() - started
        if on_complete is not None:
            usage = orjson.loads(data).get("usage") if response.status == 200 else None
            on_complete(Outcome(model=view.name, node=route.node, status=response.status, usage=usage))
        return _plain(response, data)
    raise ServiceUnavailable(
        f"No node could serve '{view.name}' ({last_error}).", code="node_unavailable", headers={"Retry-After": "5"}
    )
