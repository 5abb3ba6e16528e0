"""WebSocket inference (`/v1/realtime/completions`): messages in, the SSE relay's chunks out.

A request message is a chat/completions (or completions) body as JSON. It goes through the same
validation, key check, governance and `services.aforward` as `POST /v1/chat/completions` with `stream: true`;
the relay's SSE events are re-framed as one WebSocket text message each (the JSON is passed
through, never re-encoded). A request ends with exactly one of `{"type": "done", ...}` or an
error envelope `{"error": {...}}`.
"""

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.http import HttpResponseBase

from axserving import metrics
from axserving.access.models import Scope
from axserving.access.selectors import KeyInfo, aget_api_key
from axserving.errors import ApiError, Conflict, InvalidJson, InvalidRequest, PermissionDenied

from . import schemas, services

ENDPOINTS = {
    "chat/completions": schemas.ChatCompletionRequest,
    "completions": schemas.CompletionRequest,
}
_TYPES = {"chat.completions": "chat/completions", "chat/completions": "chat/completions", "completions": "completions"}
_DATA = b"data: "
_DONE = b"[DONE]"


@dataclass(slots=True)
class Message:
    """A decoded client message: auth, cancel, or a validated request."""

    kind: str  # "auth" | "cancel" | "request"
    api_key: str = ""
    endpoint: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""


def decode(text: str | None) -> Message:
    """Parse and validate one client message; raise an ApiError (400) for anything malformed."""
    if text is None:
        raise InvalidJson("Send requests as JSON text messages.")
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise InvalidJson("The message is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidJson("A message must be a JSON object.")
    kind = body.pop("type", None)
    if kind == "cancel":
        return Message(kind="cancel")
    if kind == "auth":
        secret = body.get("api_key")
        if not isinstance(secret, str) or not secret:
            raise InvalidRequest("An auth message carries the key as 'api_key'.", param="api_key")
        return Message(kind="auth", api_key=secret)
    endpoint = _TYPES.get(kind or ("completions" if "prompt" in body and "messages" not in body else "chat/completions"))
    if endpoint is None:
        raise InvalidRequest(f"Unknown message type {str(kind)[:40]!r}.", param="type", code="unknown_message_type")
    request_id = body.pop("request_id", None)
    body["stream"] = True  # a socket always streams
    payload = schemas.validate(ENDPOINTS[endpoint], body)
    rid = request_id if isinstance(request_id, str) and 0 < len(request_id) <= 128 else uuid.uuid4().hex
    return Message(kind="request", endpoint=endpoint, payload=payload, request_id=rid)


async def aauthenticate(authorization: str) -> KeyInfo:
    """The key behind a bearer header value, with the inference scope (401/403 otherwise)."""
    key = await aget_api_key(authorization)
    if Scope.INFERENCE not in key.scopes:
        raise PermissionDenied("This key lacks the 'inference' scope.", code="missing_scope")
    return key


def busy() -> Conflict:
    return Conflict("A request is already running on this socket; wait for its end or send a cancel.", code="request_in_progress")


async def aevents(response: HttpResponseBase) -> AsyncIterator[bytes]:
    """The JSON messages to send for a forwarded request's response: one per SSE data event, or its body."""
    if not getattr(response, "streaming", False):
        yield response.content  # type: ignore[attr-defined]
        return
    buffer = b""
    async for chunk in response.streaming_content:  # type: ignore[attr-defined]
        buffer += chunk
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if not line.startswith(_DATA):
                    continue  # SSE comments (the usage line) stay between gateway and node
                data = line[len(_DATA):]
                if data == _DONE:
                    return
                yield data


def is_error(message: bytes) -> bool:
    return message.startswith(b'{"error"')


def error_message(exc: ApiError) -> bytes:
    return orjson.dumps(exc.body())


def done_message(request_id: str, *, cancelled: bool = False) -> bytes:
    return orjson.dumps({"type": "done", "request_id": request_id, "cancelled": cancelled})


def record(*, endpoint: str, ctx: services.ApiRequest | None, key: KeyInfo | None, status: int, error: ApiError | None = None) -> None:
    """Count a socket request in the serving metrics, the same way the HTTP middleware does."""
    model = ctx.axs_model if ctx is not None else ""
    metrics.record_request(endpoint=f"realtime/{endpoint}", model=model, project=metrics.project_of(key), status=status)
    if error is not None:
        metrics.record_rejection(
            endpoint=f"realtime/{endpoint}", model=model, status=error.status, code=error.code, message=error.message
        )


async def aforward(ctx: services.ApiRequest, message: Message) -> HttpResponseBase:
    """Send one request through the same governance, admission, dispatch and relay as the SSE endpoint."""
    return await services.agoverned_forward(ctx, message.endpoint, message.payload, stream=True)
