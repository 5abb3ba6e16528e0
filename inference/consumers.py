"""WebSocket inference: a thin consumer over inference.realtime (see its docstring for the protocol)."""

import asyncio
import logging
from typing import Any

import orjson
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer

from axserving import metrics
from axserving.access.selectors import KeyInfo
from axserving.errors import ApiError, AuthenticationFailed, server_error_body

from . import realtime

logger = logging.getLogger(__name__)


class RealtimeCompletionsConsumer(AsyncWebsocketConsumer):
    """Stream chat/completions over one socket, one request at a time; cancel frees the node slot (no DB per message)."""

    # No channel layer: nothing is sent to this socket from elsewhere, and a layer would add a
    # receive loop (a Redis connection) per socket.
    channel_layer_alias = None  # type: ignore[assignment]

    key: KeyInfo | None = None
    auth_error: ApiError | None = None
    task: asyncio.Task[None] | None = None
    current: realtime.RealtimeRequest | None = None
    authorization = ""

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch minus its per-message close_old_connections thread hop: this consumer uses no ORM
        connection of its own (keys come from the process cache)."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

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
            ctx = realtime.RealtimeRequest(
                api_key=self.key, request_id=message.request_id, headers={"Authorization": self.authorization}
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

    async def _run(self, ctx: realtime.RealtimeRequest, message: realtime.Message) -> None:
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
