"""OpenAI endpoints: async views on the hot path (no ORM, no thread hop per request)."""

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from pydantic import BaseModel

from axserving.access import gate, quotas
from axserving.access.selectors import KeyInfo
from axserving.errors import ApiError, InvalidJson, MethodNotAllowed
from fleet import dispatch
from fleet.selectors import ModelView

from . import schemas, services

View = Callable[..., Awaitable[HttpResponse]]


def openai_endpoint(method: str) -> Callable[[View], View]:
    """Method check, bearer-key auth (inference scope), rejection audit and the OpenAI error envelope for a view."""

    def wrap(view: View) -> View:
        @csrf_exempt
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            key: KeyInfo | None = None
            try:
                if request.method != method:
                    raise MethodNotAllowed(method, request.path)
                if method == "GET":
                    # POSTs learn of revocations inside their quota round trip; listings ask Redis directly.
                    await quotas.arefresh_if_changed()
                key = await gate.aauthenticate(request)
                request.api_key = key  # type: ignore[attr-defined]
                return await view(request, *args, **kwargs)
            except ApiError as exc:
                gate.audit_rejection(request=request, error=exc, key=getattr(request, "api_key", key))
                return exc.to_response()

        return wrapper

    return wrap


def parse(request: HttpRequest, schema: type[BaseModel]) -> dict[str, Any]:
    """Decode the JSON body and validate its shape; unset (null) fields are dropped."""
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise InvalidJson() from None
    if not isinstance(body, dict):
        raise InvalidJson("The request body must be a JSON object.")
    return schemas.validate(schema, body)


@openai_endpoint("POST")
async def chat_completions(request: HttpRequest) -> HttpResponse:
    payload = parse(request, schemas.ChatCompletionRequest)
    return await services.agoverned_forward(request, "chat/completions", payload, stream=payload["stream"])


@openai_endpoint("POST")
async def completions(request: HttpRequest) -> HttpResponse:
    payload = parse(request, schemas.CompletionRequest)
    return await services.agoverned_forward(request, "completions", payload, stream=payload["stream"])


@openai_endpoint("POST")
async def embeddings(request: HttpRequest) -> HttpResponse:
    payload = parse(request, schemas.EmbeddingRequest)
    return await services.agoverned_forward(request, "embeddings", payload, stream=False)


@openai_endpoint("POST")
async def tokenize(request: HttpRequest) -> HttpResponse:
    payload = parse(request, schemas.TokenizeRequest)
    return await services.agoverned_forward(request, "tokenize", payload, stream=False)


@openai_endpoint("POST")
async def detokenize(request: HttpRequest) -> HttpResponse:
    payload = parse(request, schemas.DetokenizeRequest)
    return await services.agoverned_forward(request, "detokenize", payload, stream=False)


def _model_json(view: ModelView) -> schemas.ModelObject:
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
    allowed = await gate.aallowed_model_names(request.api_key)  # type: ignore[attr-defined]
    return _json({"object": "list", "data": [_model_json(view) for name, view in table.models.items() if name in allowed]})


@openai_endpoint("GET")
async def model_detail(request: HttpRequest, model_id: str) -> HttpResponse:
    await gate.acheck_model(request.api_key, model_id)  # type: ignore[attr-defined]
    table = await dispatch.aget_routing_table()
    return _json(_model_json(dispatch.resolve_model(table, model_id)))
