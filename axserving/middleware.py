"""Request id and gateway-overhead headers on every response."""

import re
import time
import uuid
from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_for(request: HttpRequest) -> str:
    """Echo a sane client-sent X-Request-ID, else mint one."""
    incoming = request.headers.get("X-Request-ID", "")
    return incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex


def _finish(request: HttpRequest, response: HttpResponseBase, started: float) -> HttpResponseBase:
    response["X-Request-ID"] = request.request_id  # type: ignore[attr-defined]
    node_seconds = getattr(request, "node_seconds", None)
    if node_seconds is not None:
        overhead = (time.perf_counter() - started - node_seconds) * 1000
        response["x-gateway-overhead-ms"] = f"{max(overhead, 0.0):.2f}"
    return response


class RequestIdMiddleware:
    """Tag the request with its id; stamp X-Request-ID and x-gateway-overhead-ms on the response."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):  # type: ignore[no-untyped-def]
        if iscoroutinefunction(self):
            return self.__acall__(request)
        started = time.perf_counter()
        request.request_id = request_id_for(request)  # type: ignore[attr-defined]
        return _finish(request, self.get_response(request), started)  # type: ignore[arg-type]

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        request.request_id = request_id_for(request)  # type: ignore[attr-defined]
        response = await self.get_response(request)  # type: ignore[misc]
        return _finish(request, response, started)
