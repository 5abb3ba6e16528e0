"""GET /v1/openapi.json and the /v1/docs page: generated from the code, in agreement with the contract."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from django.test import Client
from drf_spectacular.validation import validate_schema

from axserving.errors import InvalidRequest
from inference import schemas

from .conftest import make_key, register_stub

pytestmark = pytest.mark.django_db

# The HTTP contract: the copy in this repository (a clone anywhere has it), kept equal to the design
# documents' page beside the repository (README.md, "More") wherever that page is present.
CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "spec" / "api.md"
DESIGN_CONTRACT = Path(__file__).resolve().parents[3] / "shared" / "spec" / "api.md"
# Named by the contract but not operations of this document, and why.
NOT_DOCUMENTED = {
    "/v1/openapi.json": "the document itself",
    "/v1/realtime/completions": "a WebSocket route; OpenAPI describes HTTP",
    "/dashboard": "an HTML page behind the staff login",
    "/admin/": "the Django admin (HTML)",
}


def contract_routes() -> set[tuple[str | None, str]]:
    """(method, path) for every backticked route in the contract; a bare path takes the method before it on its line."""
    routes = set()
    for line in CONTRACT.read_text().splitlines():
        methods: list[str | None] = [None]
        for span in re.findall(r"`([^`]+)`", line):
            match = re.fullmatch(r"(?:([A-Z]+(?:/[A-Z]+)*) )?(/[^\s?]*)", span)
            if match is None:
                continue
            if match[1]:
                methods = list(match[1].split("/"))
            routes |= {(method, match[2]) for method in methods}
    return routes


def same_params(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


@pytest.fixture
def document(client: Client) -> dict[str, Any]:
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def validator(document: dict[str, Any], component: str) -> jsonschema.Draft202012Validator:
    """A JSON Schema validator for one of the document's components (OpenAPI 3.1 schemas are JSON Schema 2020-12)."""
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{component}", "components": document["components"]})


def response_schema(document: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    return document["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"]  # type: ignore[no-any-return]


def test_it_serves_a_valid_openapi_document_to_anyone(client):
    anonymous = client.get("/v1/openapi.json")
    bad_key = client.get("/v1/openapi.json", headers={"Authorization": "Bearer sk-axs-not-a-key"})

    assert anonymous.status_code == 200
    assert anonymous["Content-Type"].startswith("application/json")
    assert bad_key.status_code == 200
    document = anonymous.json()
    validate_schema(document)
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An axserving API key (`sk-axs-…`); `/v1/admin/*` needs the admin scope.",
    }


def test_it_documents_every_route_the_contract_names(document):
    if DESIGN_CONTRACT.is_file():  # in the workspace: the copy must not have drifted from the design documents
        assert CONTRACT.read_text() == DESIGN_CONTRACT.read_text(), f"copy {DESIGN_CONTRACT} to {CONTRACT}"
    routes = contract_routes()
    documented = {(method.upper(), same_params(path)) for path, ops in document["paths"].items() for method in ops}
    documented_paths = {path for _, path in documented}

    missing = sorted(
        (method, path)
        for method, path in routes
        if path not in NOT_DOCUMENTED
        and ((method, same_params(path)) not in documented if method else same_params(path) not in documented_paths)
    )

    # The parser found the contract's routes (a broken one would find nothing, and nothing would be missing).
    assert {("POST", "/v1/chat/completions"), ("DELETE", "/v1/workers/{id}"), ("PUT", "/v1/admin/policy"), ("GET", "/v1/admin/diagnostics")} <= routes
    assert missing == []
    assert set(NOT_DOCUMENTED) <= {path for _, path in routes}, "drop exclusions the contract no longer names"


def test_it_documents_the_inference_requests_as_the_gateway_validates_them(document):
    chat = document["paths"]["/v1/chat/completions"]["post"]
    ref = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = document["components"]["schemas"][ref.rsplit("/", 1)[1]]

    assert set(body["properties"]) == set(schemas.ChatCompletionRequest.model_fields)
    assert {"messages", "max_tokens", "max_completion_tokens", "stream", "response_format", "temperature"} <= set(body["properties"])
    assert set(body["required"]) == {"model", "messages"}
    assert chat["security"] == [{"ApiKey": []}]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    for path, shape in [
        ("/v1/completions", "CompletionRequest"),
        ("/v1/embeddings", "EmbeddingRequest"),
        ("/v1/tokenize", "TokenizeRequest"),
        ("/v1/detokenize", "DetokenizeRequest"),
    ]:
        content = document["paths"][path]["post"]["requestBody"]["content"]
        assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{shape}"}


@pytest.mark.parametrize(
    ("shape", "body"),
    [
        ("ChatCompletionRequest", {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stop": "\n"}),
        ("ChatCompletionRequest", {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
        ("ChatCompletionRequest", {"model": "m", "messages": []}),
        ("ChatCompletionRequest", {"model": "m", "messages": [{"role": "user"}]}),
        ("ChatCompletionRequest", {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}),
        ("ChatCompletionRequest", {"model": "m", "messages": [{"role": "robot", "content": "hi"}]}),
        ("CompletionRequest", {"model": "m", "prompt": "once upon"}),
        ("CompletionRequest", {"model": "m", "prompt": [[1, 2], [3]]}),
        ("CompletionRequest", {"model": "m", "prompt": 5}),
        ("CompletionRequest", {"model": "m", "prompt": "x", "temperature": 3}),
        ("EmbeddingRequest", {"model": "m", "input": ["a", "b"], "encoding_format": "base64"}),
        ("EmbeddingRequest", {"model": "m", "input": "a", "encoding_format": "hex"}),
        ("DetokenizeRequest", {"model": "m", "tokens": [1, -1]}),
    ],
)
def test_the_documented_request_accepts_what_the_gateway_accepts(document, shape, body):
    try:
        schemas.validate(getattr(schemas, shape), body)
        accepted = True
    except InvalidRequest:
        accepted = False

    assert validator(document, shape).is_valid(body) == accepted


def test_every_error_answer_is_documented_with_the_openai_envelope(document, client):
    error = document["components"]["schemas"]["Error"]["properties"]["error"]
    real = client.get("/v1/admin/keys")  # no key: 401

    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400 and path != "/health":  # its 503 carries the health report (contract)
                    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, (method, path, status)
    inference = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "401", "403", "404", "413", "429", "503", "504"} <= set(inference)
    assert "Retry-After" in inference["429"]["headers"]
    assert set(error["required"]) == set(InvalidRequest().body()["error"])
    assert document["paths"]["/v1/workers/{node_id}"]["delete"]["responses"]["409"]["content"]
    assert real.status_code == 401
    jsonschema.Draft202012Validator(
        {**response_schema(document, "/v1/admin/keys", "get", 401), "components": document["components"]}
    ).validate(real.json())


@pytest.mark.django_db(transaction=True)  # the gateway reads the registry from executor threads
def test_the_model_listing_and_health_answers_match_the_document(document, client, fresh_caches):
    register_stub("http://127.0.0.1:1")
    key = make_key("inference")

    models = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    health = client.get("/health")

    assert models.status_code == 200 and models.json()["data"]
    validator(document, "ModelList").validate(models.json())
    assert set(models.json()["data"][0]) == set(document["components"]["schemas"]["ModelObject"]["properties"])
    jsonschema.validate(health.json(), response_schema(document, "/health", "get", health.status_code))


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script" and "src" in found:
            self.urls.append(found["src"] or "")
        if tag == "link" and found.get("href"):
            self.urls.append(found["href"] or "")


async def test_the_docs_page_loads_swagger_ui_from_the_gateway_itself(async_client):
    from axserving.asgi import application

    page = await async_client.get("/v1/docs")
    html = page.content.decode()
    assets = _Assets()
    assets.feed(html)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://gateway") as gateway:
        fetched = {url: (r.status_code, len(r.content)) for url in assets.urls for r in [await gateway.get(url)]}

    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
    assert json.loads('"' + re.search(r'url: "([^"]+)"', html)[1] + '"') == "/v1/openapi.json"  # type: ignore[index]
    assert {url.rsplit("/", 1)[1] for url in assets.urls} >= {"swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"}
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert all(url.startswith("/static/drf_spectacular_sidecar/") for url in assets.urls), assets.urls
    assert all(status == 200 and size > 0 for status, size in fetched.values()), fetched
