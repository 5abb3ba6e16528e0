"""The OpenAI inference POSTs over HTTP, and WebSocket inference (see inference.realtime for its protocol).

Both are thin Channels consumers routed in asgi.py ahead of Django's request stack: the hot
path needs no session, middleware chain, request signals or ORM, and each of those costs a
thread hop per request under ASGI (docs/benchmarks.md).
"""

import asyncio
import logging
import time
from typing import Any

import orjson
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http import HttpResponseBase

from axserving import metrics
from axserving.access.selectors import KeyInfo
from axserving.errors import ApiError, AuthenticationFailed, BodyTooLarge, error_response, server_error_body
from axserving.middleware import stamp
from fleet import ticker

from . import realtime, services, views

logger = logging.getLogger(__name__)


class _NoConnectionCleanup:
    """Channels' dispatch minus its per-message close_old_connections thread hop: these consumers use no ORM
    connection of their own (keys come from the process cache, usage rows from a buffered writer)."""

    async def dispatch(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)


# Path -> (metrics endpoint label, view). Everything else under /v1 is Django's (asgi.py).
OPENAI_POSTS = {
    "/v1/chat/completions": ("chat/completions", views.chat_completions),
    "/v1/completions": ("completions", views.completions),
    "/v1/embeddings": ("embeddings", views.embeddings),
    "/v1/tokenize": ("tokenize", views.tokenize),
    "/v1/detokenize": ("detokenize", views.detokenize),
}


class OpenAIHttpConsumer(_NoConnectionCleanup, AsyncHttpConsumer):
    """Answer one OpenAI inference request (the views in inference.views); a client that leaves cancels it on the node.

    The answer runs as its own task so the client's disconnect is seen while it streams: Daphne
    sends `http.disconnect` when the client goes away or once the answer is complete.
    """

    channel_layer_alias = None  # type: ignore[assignment]  (no layer: nothing is sent to a request from elsewhere)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = time.perf_counter()
        self.size = 0
        self.task: asyncio.Task[None] | None = None
        self.answered = False

    async def http_request(self, message: dict[str, Any]) -> None:
        if self.task is not None:
            return  # the rest of a body already refused as too large
        chunk = message.get("body", b"")
        self.size += len(chunk)
        if self.size > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            self.body.clear()
            self.task = asyncio.create_task(self.answer(None))
        elif message.get("more_body"):
            self.body.append(chunk)
        else:
            self.body.append(chunk)
            self.task = asyncio.create_task(self.answer(b"".join(self.body)))

    async def http_disconnect(self, message: dict[str, Any]) -> None:
        if self.task is not None:
            if not self.answered:
                self.task.cancel()  # the client left: the relay closes its node connection, the node frees the slot
            await asyncio.gather(self.task, return_exceptions=True)
        raise StopConsumer()

    async def answer(self, body: bytes | None) -> None:
        ticker.ensure_running()  # the dashboard's per-process figures; a no-op once started
        request = services.ApiRequest.from_scope(self.scope, body or b"", self.started)
        endpoint, view = OPENAI_POSTS[self.scope["path"]]
        try:
            response: HttpResponseBase = BodyTooLarge().to_response() if body is None else await view(request)
        except Exception:
            logger.exception("Request failed", extra={"request_id": request.request_id})
            response = error_response(server_error_body(), 500)
        stamp(request, response, endpoint=endpoint)
        headers = [(name.encode("latin1"), value.encode("latin1")) for name, value in response.items()]
        if isinstance(response, services.EventStream):
            await self.send_headers(status=response.status_code, headers=headers)
            try:
                async for chunk in response.events:
                    await self.send_body(chunk, more_body=True)
            finally:
                await response.events.aclose()  # runs the relay's accounting now, even when the client left mid-stream
            self.answered = True
            await self.send_body(b"")
            return
        content = response.content  # type: ignore[attr-defined]
        headers.append((b"content-length", str(len(content)).encode()))
        await self.send_headers(status=response.status_code, headers=headers)
        self.answered = True
        await self.send_body(content)


class RealtimeCompletionsConsumer(_NoConnectionCleanup, AsyncWebsocketConsumer):
    """Stream chat/completions over one socket, one request at a time; cancel frees the node slot (no DB per message)."""

    # No channel layer: nothing is sent to this socket from elsewhere, and a layer would add a
    # receive loop (a Redis connection) per socket.
    channel_layer_alias = None  # type: ignore[assignment]

    key: KeyInfo | None = None
    auth_error: ApiError | None = None
    task: asyncio.Task[None] | None = None
    current: services.ApiRequest | None = None
    authorization = ""

    async def connect(self) -> None:
        await self.accept()
        metrics.realtime_sockets.count += 1
        header = dict(self.scope.get("headers", [])).get(b"authorization", b"").decode("latin1")
        if header:
            await self._authenticate(header)

    async def disconnect(self, code: int) -> None:
        metrics.realtime_sockets.count -= 1
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the relay closes its node connection: the node frees the slot

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            message = realtime.decode(text_data)
        except ApiError as exc:
            metrics.record_realtime_message("invalid")
            await self.send(text_data=realtime.error_message(exc).decode())
            return
        metrics.record_realtime_message(message.kind)
        if message.kind == "auth":
            await self._authenticate(f"Bearer {message.api_key}")
        elif message.kind == "cancel":
            await self._cancel()
        elif self.task is not None and not self.task.done():
            await self.send(text_data=realtime.error_message(realtime.busy()).decode())
        elif self.key is None:
            error = self.auth_error or AuthenticationFailed(
                "Authenticate first: an 'Authorization: Bearer' header or a {\"type\": \"auth\", \"api_key\": ...} message."
            )
            realtime.record(endpoint=message.endpoint, ctx=None, key=None, status=error.status, error=error)
            await self.send(text_data=realtime.error_message(error).decode())
        else:
            ctx = services.ApiRequest.for_socket(
                self.scope, api_key=self.key, request_id=message.request_id, authorization=self.authorization
            )
            self.current = ctx
            self.task = asyncio.create_task(self._run(ctx, message))

    async def _authenticate(self, authorization: str) -> None:
        self.authorization = authorization
        try:
            self.key = await realtime.aauthenticate(authorization)
            self.auth_error = None
            await self.send(text_data='{"type":"auth.ok"}')
        except ApiError as exc:
            self.key, self.auth_error = None, exc
            await self.send(text_data=realtime.error_message(exc).decode())

    async def _cancel(self) -> None:
        task, ctx = self.task, self.current
        if task is None or task.done() or ctx is None:
            return  # nothing running: a cancel racing the end of a request is harmless
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await self.send(text_data=realtime.done_message(ctx.request_id, cancelled=True).decode())

    async def _run(self, ctx: services.ApiRequest, message: realtime.Message) -> None:
        status = 200
        error: ApiError | None = None
        try:
            response = await realtime.aforward(ctx, message)
            status = response.status_code
            failed = status >= 400
            async for data in realtime.aevents(response):
                failed = failed or realtime.is_error(data)
                await self.send(text_data=data.decode())
            if not failed:
                await self.send(text_data=realtime.done_message(ctx.request_id).decode())
        except ApiError as exc:
            status, error = exc.status, exc
            await self.send(text_data=realtime.error_message(exc).decode())
        except asyncio.CancelledError:
            status = 499  # the client cancelled (nginx's figure for a request the client gave up on)
            raise
        except Exception:
            # The socket outlives a bug in one request: the client gets the 500 envelope as its terminal message.
            logger.exception("Realtime request failed", extra={"request_id": ctx.request_id})
            status = 500
            await self.send(text_data=orjson.dumps(server_error_body()).decode())
        finally:
            realtime.record(endpoint=message.endpoint, ctx=ctx, key=self.key, status=status, error=error)
