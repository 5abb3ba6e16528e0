"""Request id and gateway-overhead headers on every response; serving metrics for the OpenAI API."""

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase
from django.utils.module_loading import import_string
from django_prometheus import middleware as django_prometheus

from axserving import metrics

_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# The OpenAI API routes Django serves (by URL name) whose requests the serving metrics count; the
# inference POSTs are counted by their consumer (inference/consumers.py).
OPENAI_ROUTES = frozenset({"models", "model-detail"})


def request_id_for(request: HttpRequest) -> str:
    """Echo a sane client-sent X-Request-ID, else mint one."""
    incoming = request.headers.get("X-Request-ID", "")
    return incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex


def _error_of(response: HttpResponseBase) -> tuple[str, str]:
    """The envelope's code and message of an error answer (only error answers are parsed)."""
    try:
        error = orjson.loads(response.content)["error"]  # type: ignore[attr-defined]
        return str(error.get("code") or error.get("type") or "unknown"), str(error.get("message") or "")
    except (AttributeError, KeyError, TypeError, orjson.JSONDecodeError):
        return "unknown", ""


def _record(request: Any, response: HttpResponseBase, overhead: float | None, endpoint: str) -> None:
    model = getattr(request, "axs_model", "")
    status = response.status_code
    metrics.record_request(
        endpoint=endpoint, model=model, project=metrics.project_of(getattr(request, "api_key", None)), status=status
    )
    if status >= 400:
        code, message = _error_of(response)
        metrics.record_rejection(endpoint=endpoint, model=model, status=status, code=code, message=message)
    if overhead is not None:
        metrics.record_overhead(endpoint=endpoint, seconds=overhead)


def stamp(request: Any, response: HttpResponseBase, *, endpoint: str | None) -> HttpResponseBase:
    """Stamp X-Request-ID and x-gateway-overhead-ms on an answer; count it in the serving metrics when `endpoint` is set.

    `request` is an HttpRequest or the HTTP consumer's ApiRequest (anything with `request_id`,
    `axs_started` and, once known, `node_seconds`, `axs_model` and `api_key`).
    """
    response["X-Request-ID"] = request.request_id
    node_seconds = getattr(request, "node_seconds", None)
    overhead = None
    if node_seconds is not None:
        overhead = max(time.perf_counter() - request.axs_started - node_seconds, 0.0)
        response["x-gateway-overhead-ms"] = f"{overhead * 1000:.2f}"
    if endpoint is not None:
        _record(request, response, overhead, endpoint)
    return response


def _finish(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    match = request.resolver_match
    endpoint = None
    if match is not None and match.url_name in OPENAI_ROUTES:
        endpoint = match.route.removeprefix("v1/")  # a route pattern: bounded
    return stamp(request, response, endpoint=endpoint)


class RequestIdMiddleware:
    """Tag the request with its id; stamp X-Request-ID and x-gateway-overhead-ms; count OpenAI API requests (metrics)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):  # type: ignore[no-untyped-def]
        if iscoroutinefunction(self):
            return self.__acall__(request)
        request.request_id = request_id_for(request)  # type: ignore[attr-defined]
        request.axs_started = time.perf_counter()  # type: ignore[attr-defined]
        return _finish(request, self.get_response(request))  # type: ignore[arg-type]

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        from fleet import ticker

        request.axs_started = time.perf_counter()  # type: ignore[attr-defined]
        ticker.ensure_running()  # the dashboard's per-process figures; a no-op once started
        request.request_id = request_id_for(request)  # type: ignore[attr-defined]
        response = await self.get_response(request)  # type: ignore[misc]
        return _finish(request, response)


class _InlineMixin:
    """django-prometheus's middleware without Django's per-hook thread hop in async mode.

    Its hooks only touch in-process metric objects, so they run on the event loop; Django's
    MiddlewareMixin would otherwise send each of them through sync_to_async.
    """

    get_response: Any

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        self.process_request(request)  # type: ignore[attr-defined]
        response = await self.get_response(request)
        return self.process_response(request, response)  # type: ignore[attr-defined,no-any-return]


class PrometheusBeforeMiddleware(_InlineMixin, django_prometheus.PrometheusBeforeMiddleware):
    """Count every request and its total latency (django-prometheus), first in the chain."""


class PrometheusAfterMiddleware(_InlineMixin, django_prometheus.PrometheusAfterMiddleware):
    """Count requests by view, method and status (django-prometheus), last in the chain."""

    async def process_view(self, request: HttpRequest, view_func: Any, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().process_view(request, view_func, *args, **kwargs)

    async def process_exception(self, request: HttpRequest, exception: Exception) -> None:  # type: ignore[override]
        super().process_exception(request, exception)


# API-key paths need no session, CSRF check, user, messages or frame headers. In async mode each
# stock Django middleware costs a thread hop per hook, which was most of the gateway's CPU per
# request (docs/benchmarks.md), so these paths skip them.
_API_PREFIXES = ("/v1/", "/internal/", "/health", "/metrics")


class _BrowserOnly:
    """Run a stock Django middleware for browser pages only (admin, dashboard); API paths skip it."""

    inner_class: type
    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]]):
        self.get_response = get_response
        self.inner = self.inner_class(get_response)
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path.startswith(_API_PREFIXES):
            return await self.get_response(request)
        return await self.inner(request)  # type: ignore[no-any-return]


def _browser_only(dotted: str) -> type:
    inner = import_string(dotted)
    # A subclass of the wrapped class, so Django's checks (the admin's) still find it in MIDDLEWARE.
    return type(inner.__name__, (_BrowserOnly, inner), {"inner_class": inner, "__doc__": f"{dotted}, browser pages only."})


SecurityMiddleware = _browser_only("django.middleware.security.SecurityMiddleware")
SessionMiddleware = _browser_only("django.contrib.sessions.middleware.SessionMiddleware")
CommonMiddleware = _browser_only("django.middleware.common.CommonMiddleware")
CsrfViewMiddleware = _browser_only("django.middleware.csrf.CsrfViewMiddleware")
AuthenticationMiddleware = _browser_only("django.contrib.auth.middleware.AuthenticationMiddleware")
MessageMiddleware = _browser_only("django.contrib.messages.middleware.MessageMiddleware")
XFrameOptionsMiddleware = _browser_only("django.middleware.clickjacking.XFrameOptionsMiddleware")
