"""One error shape everywhere: the OpenAI envelope `{"error": {message, type, param, code}}`."""

import logging
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class ApiError(Exception):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"
    message = "Invalid request."

    def __init__(
        self,
        message: str | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.message
        self.param = param
        if code:
            self.code = code
        self.headers = headers or {}
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_response(self) -> HttpResponse:
        return error_response(self.body(), self.status, self.headers)


class InvalidRequest(ApiError):
    code = "invalid_value"


class InvalidJson(ApiError):
    code = "invalid_json"
    message = "The request body is not valid JSON."


class BodyTooLarge(ApiError):
    status = 413
    code = "request_too_large"
    message = "The request body is larger than the configured limit."


class AuthenticationFailed(ApiError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    message = "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'."

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"}, **kwargs)


class PermissionDenied(ApiError):
    status = 403
    type = "permission_error"
    code = "permission_denied"
    message = "This key is not allowed to do that."


class NotFound(ApiError):
    status = 404
    type = "not_found_error"
    code = "not_found"
    message = "Not found."


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, allowed: str, path: str) -> None:
        super().__init__(f"Use {allowed} for {path}.", headers={"Allow": allowed})


class Conflict(ApiError):
    status = 409
    type = "conflict_error"
    code = "conflict"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServiceUnavailable(ApiError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"
    message = "No node can serve this request now."


class GatewayTimeout(ApiError):
    status = 504
    type = "timeout_error"
    code = "timeout"


def error_response(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(orjson.dumps(body), status=status, content_type="application/json")
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def server_error_body() -> dict[str, Any]:
    return {
        "error": {
            "message": "The server had an error while processing the request.",
            "type": "server_error",
            "param": None,
            "code": "server_error",
        }
    }


_DRF_TYPES = {
    400: ("invalid_request_error", "invalid_value"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def _join(path: str | None, key: object) -> str | None:
    if key == "non_field_errors":
        return path
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _first_error(detail: Any, path: str | None = None) -> tuple[str | None, str]:
    """Walk DRF's nested error detail to the first message and its field path (`messages[0].role`)."""
    if isinstance(detail, dict):
        key, value = next(iter(detail.items()))
        return _first_error(value, _join(path, key))
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, (dict, list)):
                if value:  # a list of nested serializers holds {} for the valid items
                    return _first_error(value, _join(path, index))
            else:
                return path, str(value)
    return path, str(detail)


def drf_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Convert every exception a DRF view raises to the OpenAI envelope."""
    if isinstance(exc, ApiError):
        return Response(exc.body(), status=exc.status, headers=exc.headers)
    if isinstance(exc, drf_exceptions.APIException):
        status = exc.status_code
        err_type, code = _DRF_TYPES.get(status, ("invalid_request_error", "invalid_request"))
        param, message = _first_error(exc.detail)
        if isinstance(exc, drf_exceptions.ValidationError):
            message = f"{param}: {message}" if param else message
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
        return Response(
            {"error": {"message": message, "type": err_type, "param": param, "code": code}},
            status=status,
            headers=headers,
        )
    from django.core.exceptions import RequestDataTooBig
    from django.http import Http404

    if isinstance(exc, RequestDataTooBig):
        return Response(BodyTooLarge().body(), status=413)
    if isinstance(exc, Http404):
        return Response(NotFound().body(), status=404)
    logger.exception("Unhandled error in %s", context.get("view"))
    return Response(server_error_body(), status=500)


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return NotFound(f"Unknown route {request.method} {request.path}.", code="unknown_route").to_response()


def handler500(request: HttpRequest) -> HttpResponse:
    return error_response(server_error_body(), 500)


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return InvalidRequest("Bad request.", code="bad_request").to_response()


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return PermissionDenied().to_response()


def invalid_from_detail(detail: Any) -> InvalidRequest:
    """A DRF serializer's errors as one 400 envelope naming the first bad field."""
    param, message = _first_error(detail)
    return InvalidRequest(f"{param}: {message}" if param else message, param=param)
