"""The inference hot path: route a validated request to a node and relay its answer."""

import asyncio
import logging
import re
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.utils.datastructures import CaseInsensitiveMapping

from axserving import metrics
from axserving.errors import ApiError, ServiceUnavailable
from axserving.access.selectors import KeyInfo
from axserving.lifecycle import gateway
from axserving.middleware import request_id_for
from fleet import dispatch
from fleet.selectors import ModelView

from . import admission, client

logger = logging.getLogger(__name__)

# Retry once on another node when the first one fails before answering.
_ATTEMPTS = 2
_DONE = b"data: [DONE]\n\n"
_PASS_HEADERS = ("Retry-After",)
_USAGE = re.compile(rb": usage (\{[^\n]*\})\n")


@dataclass(slots=True)
class ApiRequest:
    """What the OpenAI views, governance and `aforward` read from an HttpRequest, built from an ASGI scope (HTTP or WebSocket)."""

    method: str
    path: str
    headers: CaseInsensitiveMapping[str]
    body: bytes
    client: str
    axs_started: float
    request_id: str = ""
    api_key: KeyInfo | None = None
    axs_model: str = ""
    node_seconds: float | None = None
    priority: int = 0

    @property
    def META(self) -> dict[str, str]:  # noqa: N802  (HttpRequest's name: the rejection audit reads the client address)
        return {"REMOTE_ADDR": self.client}

    @classmethod
    def from_scope(cls, scope: dict[str, Any], body: bytes, started: float) -> "ApiRequest":
        headers = CaseInsensitiveMapping({name.decode("latin1"): value.decode("latin1") for name, value in scope["headers"]})
        client = scope.get("client") or ("", 0)
        request = cls(method=scope["method"], path=scope["path"], headers=headers, body=body, client=client[0], axs_started=started)
        request.request_id = request_id_for(request)  # type: ignore[arg-type]
        return request

    @classmethod
    def for_socket(cls, scope: dict[str, Any], *, api_key: KeyInfo, request_id: str, authorization: str) -> "ApiRequest":
        """One request on a WebSocket: the socket's key (its Authorization, for governance's key reload) and the message's id."""
        client = scope.get("client") or ("", 0)
        return cls(
            method="POST", path=scope["path"], headers=CaseInsensitiveMapping({"Authorization": authorization}), body=b"",
            client=client[0], axs_started=time.perf_counter(), request_id=request_id, api_key=api_key,
        )  # fmt: skip


@dataclass(slots=True)
class Outcome:
    """How a forwarded request ended, for usage accounting."""

    model: str
    node: str
    status: int
    usage: dict[str, int] | None
    endpoint: str = ""


OnComplete = Callable[[Outcome], None]


def _endpoint_of(outcome: Outcome | None) -> str:
    return outcome.endpoint if outcome is not None and outcome.endpoint else metrics.UNKNOWN


def _accounting(request: Any, endpoint: str, started: float, on_complete: OnComplete | None) -> OnComplete:
    """Wrap the caller's hook so every outcome also lands in the latency and token metrics."""
    project = metrics.project_of(getattr(request, "api_key", None))

    def complete(outcome: Outcome) -> None:
        metrics.record_completion(
            endpoint=endpoint, model=outcome.model, project=project, seconds=time.perf_counter() - started, usage=outcome.usage
        )
        if on_complete is not None:
            on_complete(outcome)

    return complete


def _usage_in(data: bytes) -> dict[str, int] | None:
    match = _USAGE.search(data)
    return orjson.loads(match.group(1)) if match else None


def _stream_error(message: str, code: str) -> bytes:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n" + _DONE


class Flight:
    """One admitted request on one node: frees its admission slot and load count exactly once."""

    __slots__ = ("gate", "node", "open")

    def __init__(self, gate: admission.Gate) -> None:
        self.gate = gate
        self.node: str | None = None
        self.open = True
        gateway.inflight += 1

    def on(self, node: str) -> None:
        if self.node is not None:
            dispatch.finished(self.node, ok=False)
        self.node = node
        dispatch.started(node)

    def end(self, *, ok: bool) -> None:
        if not self.open:
            return
        self.open = False
        if self.node is not None:
            dispatch.finished(self.node, ok=ok)
            self.node = None
        self.gate.release()
        gateway.inflight -= 1


async def _relay(
    response: aiohttp.ClientResponse,
    request_id: str,
    outcome: Outcome | None = None,
    on_complete: OnComplete | None = None,
    flight: Flight | None = None,
    started: float | None = None,
) -> AsyncGenerator[bytes, None]:
    """Pass the node's SSE bytes through; end with an error event if the node stops mid-way.

    SSE and WebSocket clients both read this one relay; `started` (perf_counter at arrival)
    turns the first chunk into the time-to-first-token observation.
    """
    tail = b""
    node_failed = False
    first = started is not None
    model = outcome.model if outcome is not None else metrics.UNKNOWN
    try:
        async for chunk in response.content.iter_any():
            if first:
                first = False
                metrics.record_ttft(model=model, seconds=time.perf_counter() - started)  # type: ignore[operator]
            tail = (tail + chunk)[-1024:]  # holds the usage comment and [DONE] at the end
            yield chunk
        if not tail.endswith(_DONE):
            node_failed = True
            logger.warning("Node stream ended early", extra={"request_id": request_id})
            metrics.record_stream_failure(model=model, reason="node_stream_ended", endpoint=_endpoint_of(outcome))
            yield _stream_error("The node ended the stream early.", "node_stream_ended")
    except (aiohttp.ClientError, TimeoutError) as exc:
        node_failed = True
        logger.warning("Node stream failed: %s", exc, extra={"request_id": request_id})
        metrics.record_stream_failure(model=model, reason="node_stream_failed", endpoint=_endpoint_of(outcome))
        yield _stream_error("The node stopped answering mid-stream.", "node_stream_failed")
    finally:
        # close(), not release(): an unfinished stream must drop the connection so the node cancels.
        response.close()
        if flight is not None:
            flight.end(ok=not node_failed)  # a client that went away is not the node's fault
        if outcome is not None and on_complete is not None:
            outcome.usage = _usage_in(tail)
            on_complete(outcome)


class EventStream(StreamingHttpResponse):
    """The node's event stream on its way to the client; `events` is the relay, which a consumer closes when the client leaves."""

    def __init__(self, events: AsyncGenerator[bytes, None], node: str) -> None:
        super().__init__(events, content_type="text/event-stream")
        self.events = events
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"
        self["X-Node"] = node


def _plain(response: aiohttp.ClientResponse, body: bytes, node: str) -> HttpResponse:
    out = HttpResponse(body, status=response.status, content_type=response.headers.get("Content-Type", "application/json"))
    for name in _PASS_HEADERS:
        if name in response.headers:
            out[name] = response.headers[name]
    out["X-Node"] = node
    return out


def _affinity_key(payload: dict[str, Any], key_id: int) -> str:
    """Who asks and how the conversation starts: requests sharing it share a KV prefix."""
    if "messages" in payload:
        head = payload["messages"][0].get("content") or ""
    else:
        first = (payload.get("prompt") or payload.get("input") or [""])[0]
        head = first if isinstance(first, str) else str(first[:64])
    return f"{key_id}:{head[:256]}"


async def aforward(
    *, request: Any, endpoint: str, payload: dict[str, Any], stream: bool, on_complete: OnComplete | None = None
) -> HttpResponse:
    """Admit, pick a ready node for payload['model'], forward and relay (retry once on another node before the first byte).

    `request` is an HttpRequest or an ApiRequest (the HTTP and WebSocket consumers'): anything with
    `api_key` and `request_id`. Records the serving metrics (in-process only).
    """
    started = getattr(request, "axs_started", None) or time.perf_counter()
    if gateway.draining:
        raise ServiceUnavailable("This gateway is shutting down.", code="gateway_draining", headers={"Retry-After": "1"})
    view = await dispatch.aget_model_view(str(payload["model"]))
    request.axs_model = view.name  # the metrics label: canonical, so bounded by the registry
    if not view.routes:
        raise dispatch.no_node(view)
    gate = admission.gate(view.name)
    queued = time.perf_counter()
    await gate.acquire(sum(r.slots for r in view.routes))
    metrics.record_admission_wait(model=view.name, seconds=time.perf_counter() - queued)
    flight = Flight(gate)
    on_complete = _accounting(request, endpoint, started, on_complete)
    try:
        return await _forward(request, endpoint, payload, stream, on_complete, view, flight, started)
    except BaseException:
        flight.end(ok=False)
        raise


async def _forward(
    request: Any,
    endpoint: str,
    payload: dict[str, Any],
    stream: bool,
    on_complete: OnComplete,
    view: ModelView,
    flight: Flight,
    started: float,
) -> HttpResponse:
    payload["model"] = view.name
    body = orjson.dumps(payload)
    affinity = _affinity_key(payload, request.api_key.id) if dispatch.policy_for(view.name) == "model_affinity" else ""
    tried: set[str] = set()
    sent = time.perf_counter()  # node time counts from here: admission waits stay in the overhead figure
    last_error: str = ""
    for _ in range(_ATTEMPTS):
        try:
            route = dispatch.pick_route(view, exclude=frozenset(tried), affinity_key=affinity)
        except ServiceUnavailable:
            if not last_error:
                raise
            break
        tried.add(route.node)
        flight.on(route.node)
        try:
            response = await client.post(route.address, f"/internal/v1/{endpoint}", body, request_id=request.request_id)
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("Node %s unreachable: %s", route.node, exc, extra={"request_id": request.request_id})
            last_error = f"node {route.node} unreachable"
            metrics.record_retry(model=view.name, reason="unreachable")
            continue
        if response.status >= 500 or (response.status == 429 and len(tried) < _ATTEMPTS):
            await response.read()
            response.release()
            last_error = f"node {route.node} answered {response.status}"
            metrics.record_retry(model=view.name, reason="busy" if response.status == 429 else "server_error")
            continue
        if stream and response.status == 200:
            request.node_seconds = time.perf_counter() - sent
            outcome = Outcome(model=view.name, node=route.node, status=200, usage=None, endpoint=endpoint)
            return EventStream(_relay(response, request.request_id, outcome, on_complete, flight, started), route.node)
        try:
            data = await response.read()
        finally:
            response.release()
        request.node_seconds = time.perf_counter() - sent
        flight.end(ok=True)
        usage = orjson.loads(data).get("usage") if response.status == 200 else None
        on_complete(Outcome(model=view.name, node=route.node, status=response.status, usage=usage, endpoint=endpoint))
        return _plain(response, data, route.node)
    raise ServiceUnavailable(
        f"No node could serve '{view.name}' ({last_error}).", code="node_unavailable", headers={"Retry-After": "5"}
    )


async def agoverned_forward(request: Any, endpoint: str, payload: dict[str, Any], stream: bool) -> HttpResponseBase:
    """Policy and quota admission (governance), then forward; the ticket settles usage when the answer ends."""
    from axserving.access import gate

    ticket = await gate.aadmit(request=request, endpoint=endpoint, payload=payload)
    try:
        return await aforward(request=request, endpoint=endpoint, payload=payload, stream=stream, on_complete=ticket.on_complete)
    except ApiError as exc:
        ticket.release(exc.status)
        raise
    except asyncio.CancelledError:
        ticket.release(499)  # the client went away before the node answered
        raise
    except BaseException:
        ticket.release(500)
        raise
