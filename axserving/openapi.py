"""The OpenAPI document (`GET /v1/openapi.json`) and its browsable page (`GET /v1/docs`).

drf-spectacular generates the control API from the DRF views; the hooks here add what it cannot
see: the DRF views behind `urls.by_method` paths, the OpenAI routes that are not DRF views (the
inference POSTs served by a Channels consumer, the model listings, whose request and answer
shapes are the pydantic models and TypedDicts in inference/schemas.py), `/health`, `/metrics`,
and the OpenAI error envelope on every error answer.
"""

import functools
from typing import Any

from django.urls import URLPattern, get_resolver
from drf_spectacular.generators import EndpointEnumerator
from drf_spectacular.renderers import OpenApiJsonRenderer2
from drf_spectacular.settings import spectacular_settings
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from pydantic import TypeAdapter
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from axserving import errors

REF = "#/components/schemas/{model}"
ERROR_COMPONENT = "Error"

# When each error status is answered (spec/api.md, "Errors"); the example bodies come from the
# ApiError classes that the gateway raises.
_WHEN: dict[int, tuple[type[errors.ApiError], str]] = {
    400: (errors.InvalidRequest, "Malformed JSON, wrong types or out-of-range values."),
    401: (errors.AuthenticationFailed, "Missing or unknown bearer key."),
    403: (errors.PermissionDenied, "The key is valid but not allowed this model, endpoint or action."),
    404: (errors.NotFound, "Unknown model, worker, deployment or route."),
    409: (errors.Conflict, "Lifecycle conflict (model already loaded, load in progress, node busy)."),
    413: (errors.BodyTooLarge, "The request body is over the configured limit."),
    429: (errors.RateLimited, "Per-key rate or token quota exceeded, or the admission queue is full."),
    503: (errors.ServiceUnavailable, "No node can serve the model now."),
    504: (errors.GatewayTimeout, "Queued longer than the admission timeout."),
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}},
    429: {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying."}},
}
_ERROR_SCHEMA = {
    "type": "object",
    "description": "The OpenAI error envelope, the body of every error answer.",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "examples": sorted({cls.type for cls, _ in _WHEN.values()})},
                "param": {"type": ["string", "null"], "description": "The request field at fault, if any."},
                "code": {"type": "string", "description": "A stable snake_case code."},
            },
        }
    },
}
_INFERENCE_ERRORS = (400, 401, 403, 404, 413, 429, 503, 504)


def _answer(description: str, schema: dict[str, Any], media_type: str = "application/json") -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": schema}}}


def error_response(status: int) -> dict[str, Any]:
    """The OpenAPI response object of one error status: the envelope, with an example."""
    cls, when = _WHEN[status]
    response = _answer(when, {"$ref": REF.format(model=ERROR_COMPONENT)})
    response["content"]["application/json"]["example"] = cls(when).body()
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response


# Preprocessing: the DRF views that `urls.by_method` hides behind one function per path.


def add_shared_path_views(endpoints: list[tuple[Any, ...]], **kwargs: Any) -> list[tuple[Any, ...]]:
    """Add the DRF views that share a path with an async OpenAI view (`urls.by_method`)."""
    enumerator = EndpointEnumerator()
    added = []
    for pattern in get_resolver().url_patterns:
        if not isinstance(pattern, URLPattern):
            continue
        path_regex = str(pattern.pattern)
        for method, view in getattr(pattern.callback, "handlers", {}).items():
            if hasattr(view, "cls"):  # a DRF view; the async OpenAI views are added by add_non_drf_paths
                added.append((enumerator.get_path_from_regex(path_regex), path_regex, method, view))
    return [*endpoints, *added]


# Postprocessing: the routes that are not DRF views, then the error envelope everywhere.


def _hoist(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """Move pydantic's `$defs` into the document's components; return what is left."""
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    return schema


def _component(shape: Any, components: dict[str, Any]) -> dict[str, str]:
    """Register a pydantic model or TypedDict as a component (request shapes as validated); return its $ref."""
    schema = _hoist(TypeAdapter(shape).json_schema(ref_template=REF, mode="validation"), components)
    components.setdefault(shape.__name__, schema)
    return {"$ref": REF.format(model=shape.__name__)}


def _openai_operations(components: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from inference import schemas
    from inference.consumers import OPENAI_POSTS

    bodies: dict[str, tuple[type, str, bool]] = {
        "/v1/chat/completions": (schemas.ChatCompletionRequest, "Create a chat completion.", True),
        "/v1/completions": (schemas.CompletionRequest, "Create a text completion.", True),
        "/v1/embeddings": (schemas.EmbeddingRequest, "Embed one or more inputs.", False),
        "/v1/tokenize": (schemas.TokenizeRequest, "Tokenize text for a model.", False),
        "/v1/detokenize": (schemas.DetokenizeRequest, "Turn token ids back into text for a model.", False),
    }
    if set(bodies) != set(OPENAI_POSTS):
        raise RuntimeError(f"Document every inference POST: {sorted(set(OPENAI_POSTS) ^ set(bodies))}")
    key = [{"ApiKey": []}]
    paths: dict[str, dict[str, Any]] = {}
    for path, (shape, summary, streams) in bodies.items():
        request = _component(shape, components)
        answer = _answer("The OpenAI answer object.", {"type": "object"})
        if streams:
            answer["description"] = "The OpenAI answer object, or with `stream: true` Server-Sent Events."
            events = {"type": "string", "description": "`data: {chunk}` events, then `data: [DONE]`."}
            answer["content"]["text/event-stream"] = {"schema": events}
        paths[path] = {
            "post": {
                "operationId": path.removeprefix("/v1/").replace("/", "_") + "_create",
                "summary": summary,
                "description": "Needs a key with the `inference` scope. Other fields follow the OpenAI API reference.",
                "tags": ["openai"],
                "security": key,
                "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
                "responses": {"200": answer, **{str(status): error_response(status) for status in _INFERENCE_ERRORS}},
            }
        }
    model_param = {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}
    listing = _answer("Models the key may use, with readiness.", _component(schemas.ModelList, components))
    one = _answer("One model (an id or an alias), with readiness.", _component(schemas.ModelObject, components))
    paths["/v1/models"] = {
        "get": {
            "operationId": "models_list",
            "summary": "List models.",
            "tags": ["openai"],
            "security": key,
            "responses": {"200": listing},
        }
    }
    paths["/v1/models/{model_id}"] = {
        "get": {
            "operationId": "models_retrieve",
            "summary": "Retrieve a model.",
            "tags": ["openai"],
            "security": key,
            "parameters": [model_param],
            "responses": {"200": one},
        }
    }
    return paths


def _operations_paths() -> dict[str, dict[str, Any]]:
    health = {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"enum": ["ok", "degraded", "unavailable"]},
            "models": {"type": "array", "items": {"type": "string"}, "description": "Servable models."},
            "checks": {"type": "object", "additionalProperties": {"type": "string"}},
            "reasons": {"type": "array", "items": {"type": "string"}},
            "inflight": {"type": "integer"},
            "queued": {"type": "object", "additionalProperties": {"type": "integer"}, "description": "By model."},
        },
    }
    heartbeat = {
        "type": "object",
        "required": ["status", "telemetry"],
        "properties": {
            "status": {"enum": ["starting", "ready", "draining"]},
            "telemetry": {"type": "object", "description": "inflight, queued, slots, tokens_per_s, ttft_p95_ms, free_memory_bytes..."},
            "models": {"type": "object", "additionalProperties": {"type": "object"}, "description": "By model id: state, error, last_used."},
        },
    }
    heartbeat_ack = {
        "type": "object",
        "required": ["id", "drain_requested"],
        "properties": {"id": {"type": "integer"}, "drain_requested": {"type": "boolean"}},
    }
    return {
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness and servability of this gateway process (no key).",
                "tags": ["operations"],
                "security": [],
                "responses": {"200": _answer("`ok` or `degraded`.", health), "503": _answer("`unavailable`.", health)},
            }
        },
        "/internal/nodes/{node_id}/heartbeat": {
            "post": {
                "operationId": "nodes_heartbeat",
                "summary": "A node's liveness, load and model reports (every few seconds; an async view, not DRF).",
                "tags": ["internal"],
                "security": [{"NodeToken": []}],
                "parameters": [{"name": "node_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": heartbeat}}},
                "responses": {"200": _answer("Recorded; `drain_requested` tells the node to drain.", heartbeat_ack)},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "prometheus_metrics",
                "summary": "Prometheus text; a `metrics` or `admin` key only when AXS_METRICS_REQUIRE_KEY is set.",
                "tags": ["operations"],
                "security": [{}, {"ApiKey": []}],
                "responses": {"200": _answer("Prometheus exposition format.", {"type": "string"}, "text/plain")},
            }
        },
    }


def add_non_drf_paths(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Add the routes that are not DRF views (the OpenAI ones, /health, /metrics, heartbeats) next to the DRF operations."""
    components = result.setdefault("components", {}).setdefault("schemas", {})
    for path, operations in {**_openai_operations(components), **_operations_paths()}.items():
        result["paths"].setdefault(path, {}).update(operations)
    result["paths"] = dict(sorted(result["paths"].items()))
    return result


def add_error_responses(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Give every operation the error answers it can give, each with the OpenAI envelope.

    A key-protected operation can answer 401 and 403; one with path parameters 404; one taking a
    body or query parameters 400 (and 413 for a body). Statuses a view declares itself (409) get
    the envelope here too.
    """
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components[ERROR_COMPONENT] = _ERROR_SCHEMA
    result["components"]["schemas"] = dict(sorted(components.items()))
    for operations in result["paths"].values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            where = {p.get("in") for p in operation.get("parameters", [])}
            statuses = set()
            if any(operation.get("security") or [{}]):
                statuses |= {401, 403}
            if "path" in where:
                statuses.add(404)
            if "requestBody" in operation:
                statuses |= {400, 413}
            if "query" in where:
                statuses.add(400)
            for status in statuses:
                responses.setdefault(str(status), error_response(status))
            for status, response in responses.items():
                if int(status) >= 400 and "content" not in response:  # a view's own (409), maybe with a description
                    described = response.get("description")
                    response.update(error_response(int(status)))
                    response["description"] = described or response["description"]
    return result


# The views.


@functools.cache
def _document() -> dict[str, Any]:
    generator = spectacular_settings.DEFAULT_GENERATOR_CLASS()
    return generator.get_schema(request=None, public=True)  # type: ignore[no-any-return]


class SchemaView(SpectacularAPIView):
    """The OpenAPI 3.1 document, as JSON, for anyone: no key.

    It describes the code, not the deployment: the same for every gateway of a version, with no
    key, project, model or node in it, like the published OpenAI specification. Clients need it
    before they hold a key (to generate a client, or to find the right scope to ask for), and
    the browsable page loads it before its user can enter one. Generated once per process and
    then reused, so an unauthenticated caller cannot make the gateway regenerate it.
    """

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    renderer_classes = [OpenApiJsonRenderer2]  # application/json

    @extend_schema(exclude=True)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return Response(_document())


class DocsView(SpectacularSwaggerView):
    """Swagger UI over the document, from the gateway's own static files (drf-spectacular-sidecar): no internet needed.

    Public like the document; "Authorize" takes a key for trying requests from the page.
    """

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    url_name = "openapi-schema"
