"""OpenAI endpoints: async views on the hot path (no ORM, no thread hop per request)."""

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers as drf

from axserving.access.models import Scope
from axserving.access.selectors import aget_api_key
from axserving.errors import ApiError, BodyTooLarge, InvalidJson, InvalidRequest, PermissionDenied, invalid_from_detail
from fleet import dispatch
from fleet.selectors import ModelView

from . import serializers, services

View = Callable[..., Awaitable[HttpResponse]]


def openai_endpoint(method: str) -> Callable[[View], View]:
    """Method check, bearer-key auth (inference scope) and the OpenAI error envelope for a view."""

    def wrap(view: View) -> View:
        @csrf_exempt
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                if request.method != method:
                    raise InvalidRequest(f"Use {method} for {request.path}.", code="method_not_allowed")
                key = await aget_api_key(request.headers.get("Authorization", ""))
                if Scope.INFERENCE not in key.scopes:
                    raise PermissionDenied("This key lacks the 'inference' scope.", code="missing_scope")
                request.api_key = key  # type: ignore[attr-defined]
                return await view(request, *args, **kwargs)
            except ApiError as exc:
                response = exc.to_response()
                if exc.code == "method_not_allowed":
                    response.status_code = 405
                    response["Allow"] = method
                return response
            except RequestDataTooBig:
                return BodyTooLarge().to_response()

        return wrapper

    return wrap


def parse(request: HttpRequest, serializer_class: type[drf.Serializer]) -> dict[str, Any]:
    """Decode the JSON body and validate its shape; unset (null) fields are dropped."""
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise InvalidJson() from None
    if not isinstance(body, dict):
        raise InvalidJson("The request body must be a JSON object.")
    serializer = serializer_class(data=body)
    if not serializer.is_valid():
        raise invalid_from_detail(serializer.errors)
    return {k: v for k, v in serializer.validated_data.items() if v is not None}


@openai_endpoint("POST")
async def chat_completions(request: HttpRequest) -> HttpResponse:
    payload = parse(request, serializers.ChatCompletionSerializer)
    return await services.aforward(request=request, endpoint="chat/completions", payload=payload, stream=payload["stream"])


@openai_endpoint("POST")
async def completions(request: HttpRequest) -> HttpResponse:
    payload = parse(request, serializers.CompletionSerializer)
    return await services.aforward(request=request, endpoint="completions", payload=payload, stream=payload["stream"])


@openai_endpoint("POST")
async def embeddings(request: HttpRequest) -> HttpResponse:
    payload = parse(request, serializers.EmbeddingSerializer)
    return await services.aforward(request=request, endpoint="embeddings", payload=payload, stream=False)


@openai_endpoint("POST")
async def tokenize(request: HttpRequest) -> HttpResponse:
    payload = parse(request, serializers.TokenizeSerializer)
    return await services.aforward(request=request, endpoint="tokenize", payload=payload, stream=False)


@openai_endpoint("POST")
async def detokenize(request: HttpRequest) -> HttpResponse:
    payload = parse(request, serializers.DetokenizeSerializer)
    return await services.aforward(request=request, endpoint="detokenize", payload=payload, stream=False)


def _model_json(view: ModelView) -> dict[str, Any]:
    return {
        "id": view.name,
        "object": "model",
        "created": view.created,
        "owned_by": "axserving",
        "aliases": list(view.aliases),
        "ready": bool(view.routes),
        "context_length": view.n_ctx,
        "nodes": [route.node for route in view.routes],
    }


def _json(body: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(body), status=status, content_type="application/json")


@openai_endpoint("GET")
async def models_list(request: HttpRequest) -> HttpResponse:
    table = await dispatch.aget_routing_table()
    return _json({"object": "list", "data": [_model_json(view) for view in table.models.values()]})


@openai_endpoint("GET")
async def model_detail(request: HttpRequest, model_id: str) -> HttpResponse:
    table = await dispatch.aget_routing_table()
    return _json(_model_json(dispatch.resolve_model(table, model_id)))
