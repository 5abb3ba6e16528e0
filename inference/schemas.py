"""Request shapes of the OpenAI endpoints, as pydantic models (and the model listing's answer, as TypedDicts).

They check shape, types and ranges only, in tens of microseconds (the hot path's budget is a
few milliseconds in all), and their JSON schema feeds the OpenAPI document.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from typing_extensions import TypedDict  # pydantic reads typing.TypedDict only from Python 3.12

from axserving.errors import InvalidRequest

MAX_STOP = 4

# What the `mode="before"` validators accept, for the JSON schema (the OpenAPI document).
Inputs = str | list[str] | list[Annotated[int, Field(ge=0)]] | list[list[Annotated[int, Field(ge=0)]]]


class TextPart(TypedDict):
    type: Literal["text"]
    text: str


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _inputs(value: Any, max_items: int) -> list[str | list[int]]:
    """A string, a list of strings, a token array or a list of token arrays, as a list."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(_is_token(t) for t in value):
        items = [value]
    elif isinstance(value, list) and value:
        items = value
    else:
        raise ValueError("Expected a non-empty string, list of strings or token array(s).")
    if len(items) > max_items:
        raise ValueError(f"At most {max_items} inputs are allowed.")
    for item in items:
        if not isinstance(item, str) and not (isinstance(item, list) and item and all(_is_token(t) for t in item)):
            raise ValueError("Each input must be a string or a non-empty list of token ids.")
    return items


class StreamOptions(_Request):
    include_usage: bool = False


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    @field_validator("json_schema")
    @classmethod
    def _schema_present(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        if info.data.get("type") == "json_schema" and not (value and isinstance(value.get("schema"), dict)):
            raise ValueError("json_schema.schema (an object) is required.")
        return value


def _content_required(schema: dict[str, Any]) -> None:
    schema["required"].append("content")  # its validator refuses a missing one (with a clearer message than pydantic's)


class Message(_Request):
    model_config = ConfigDict(extra="ignore", json_schema_extra=_content_required)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Any = Field(default=None, validate_default=True)
    name: Annotated[str, Field(max_length=256)] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before", json_schema_input_type=str | list[TextPart])
    @classmethod
    def _text(cls, value: Any) -> str:
        """A string, or text parts joined into one (images are not supported)."""
        if value is None:
            raise ValueError("This field is required.")
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value:
            texts = []
            for part in value:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("Only text content parts ({'type': 'text', 'text': ...}) are supported.")
                texts.append(part["text"])
            return "\n".join(texts)
        raise ValueError("Expected a string or a non-empty list of content parts.")


class Sampling(_Request):
    """Fields shared by chat and text completions."""

    model: Annotated[str, Field(max_length=200)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repeat_penalty: Annotated[float, Field(ge=0, le=10)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    stop: list[str] | None = None
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = None
    n: Annotated[int, Field(ge=1, le=16)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed with stream=true.")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value and not all(k.isdigit() for k in value):
            raise ValueError("Keys must be token ids (strings of digits).")
        return value

    @field_validator("stop", mode="before", json_schema_input_type=str | list[str] | None)
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and len(value) > MAX_STOP:
            raise ValueError(f"At most {MAX_STOP} stop sequences are allowed.")
        if value is not None and not (isinstance(value, list) and all(isinstance(s, str) for s in value)):
            raise ValueError("Expected a string or a list of strings.")
        return value


class ChatCompletionRequest(Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: Any = None
    tool_choice: Any = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: Any) -> Any:
        if value:
            raise ValueError("tools are not supported yet.")
        return value


class CompletionRequest(Sampling):
    prompt: list[str | list[int]]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt", mode="before", json_schema_input_type=Inputs)
    @classmethod
    def _prompt(cls, value: Any) -> list[str | list[int]]:
        return _inputs(value, 64)


class EmbeddingRequest(_Request):
    model: Annotated[str, Field(max_length=200)]
    input: list[str | list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None

    @field_validator("input", mode="before", json_schema_input_type=Inputs)
    @classmethod
    def _input(cls, value: Any) -> list[str | list[int]]:
        return _inputs(value, 2048)


class TokenizeRequest(_Request):
    model: Annotated[str, Field(max_length=200)]
    content: str
    add_special: bool = False


class DetokenizeRequest(_Request):
    model: Annotated[str, Field(max_length=200)]
    tokens: list[Annotated[int, Field(ge=0)]]


class ModelObject(TypedDict):
    """One entry of `GET /v1/models` (and the answer of `GET /v1/models/{id}`)."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    aliases: list[str]
    ready: bool
    context_length: int
    nodes: list[str]


class ModelList(TypedDict):
    object: Literal["list"]
    data: list[ModelObject]


def _param(loc: tuple[Any, ...]) -> str | None:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def validate(schema: type[BaseModel], body: Any) -> dict[str, Any]:
    """The validated request as a dict without unset fields; 400 naming the first bad field otherwise."""
    try:
        return schema.model_validate(body).model_dump(exclude_none=True)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = _param(tuple(p for p in first["loc"] if p not in ("function-after", "function-before")))
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidRequest(f"{param}: {message}" if param else message, param=param) from None
