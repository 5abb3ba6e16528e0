"""Request shapes of the OpenAI endpoints. They check shape, types and ranges only."""

from typing import Any

from rest_framework import serializers

ROLES = ["system", "developer", "user", "assistant", "tool"]
MAX_STOP = 4


class StopField(serializers.Field):
    """`stop`: a string or a list of up to four strings."""

    def to_internal_value(self, data: Any) -> list[str]:
        if isinstance(data, str):
            return [data]
        if isinstance(data, list) and all(isinstance(s, str) for s in data):
            if len(data) > MAX_STOP:
                raise serializers.ValidationError(f"At most {MAX_STOP} stop sequences are allowed.")
            return data
        raise serializers.ValidationError("Expected a string or a list of strings.")

    def to_representation(self, value: Any) -> Any:
        return value


class ContentField(serializers.Field):
    """Message content: a string, or a list of text parts (joined into one string)."""

    def to_internal_value(self, data: Any) -> str:
        if isinstance(data, str):
            return data
        if isinstance(data, list) and data:
            texts = []
            for part in data:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise serializers.ValidationError(
                        "Only text content parts ({'type': 'text', 'text': ...}) are supported."
                    )
                texts.append(part["text"])
            return "\n".join(texts)
        raise serializers.ValidationError("Expected a string or a non-empty list of content parts.")

    def to_representation(self, value: Any) -> Any:
        return value


class PromptField(serializers.Field):
    """A string, a list of strings, a token array, or a list of token arrays; always a list out."""

    def __init__(self, *, max_items: int = 2048, **kwargs: Any):
        self.max_items = max_items
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> list[str | list[int]]:
        if isinstance(data, str):
            items: list[Any] = [data]
        elif isinstance(data, list) and data and all(_is_token(t) for t in data):
            items = [data]
        elif isinstance(data, list) and data:
            items = data
        else:
            raise serializers.ValidationError("Expected a non-empty string, list of strings or token array(s).")
        if len(items) > self.max_items:
            raise serializers.ValidationError(f"At most {self.max_items} inputs are allowed.")
        for item in items:
            if isinstance(item, str):
                continue
            if not (isinstance(item, list) and item and all(_is_token(t) for t in item)):
                raise serializers.ValidationError("Each input must be a string or a non-empty list of token ids.")
        return items

    def to_representation(self, value: Any) -> Any:
        return value


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = serializers.BooleanField(required=False, default=False)


class ResponseFormatSerializer(serializers.Serializer):
    type = serializers.ChoiceField(["text", "json_object", "json_schema"])
    json_schema = serializers.DictField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["type"] == "json_schema":
            spec = attrs.get("json_schema")
            if not spec or not isinstance(spec.get("schema"), dict):
                raise serializers.ValidationError({"json_schema": "json_schema.schema (an object) is required."})
        return attrs


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(ROLES)
    content = ContentField(required=False, allow_null=True)
    name = serializers.CharField(required=False, max_length=256)
    tool_call_id = serializers.CharField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("content") is None:
            raise serializers.ValidationError({"content": "This field is required."})
        return attrs


class SamplingSerializer(serializers.Serializer):
    """Fields shared by chat and text completions."""

    model = serializers.CharField(max_length=200)
    stream = serializers.BooleanField(required=False, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    top_k = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    min_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    repeat_penalty = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=10)
    presence_penalty = serializers.FloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    frequency_penalty = serializers.FloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    logit_bias = serializers.DictField(
        child=serializers.FloatField(min_value=-100, max_value=100), required=False, allow_null=True
    )
    stop = StopField(required=False, allow_null=True)
    seed = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=2**32 - 1)
    n = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=16)
    logprobs = serializers.JSONField(required=False, allow_null=True)
    user = serializers.CharField(required=False, allow_blank=True, max_length=256)

    def validate_logit_bias(self, value: dict[str, float] | None) -> dict[str, float] | None:
        for token in value or {}:
            if not token.isdigit():
                raise serializers.ValidationError("Keys must be token ids (strings of digits).")
        return value

    def validate_logprobs(self, value: Any) -> Any:
        if value:
            raise serializers.ValidationError("logprobs are not supported yet.", code="unsupported_parameter")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("stream_options") and not attrs.get("stream"):
            raise serializers.ValidationError({"stream_options": "stream_options is only allowed with stream=true."})
        return attrs


class ChatCompletionSerializer(SamplingSerializer):
    messages = MessageSerializer(many=True, allow_empty=False)
    max_completion_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    response_format = ResponseFormatSerializer(required=False, allow_null=True)
    top_logprobs = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=20)
    tools = serializers.JSONField(required=False, allow_null=True)
    tool_choice = serializers.JSONField(required=False, allow_null=True)

    def validate_tools(self, value: Any) -> Any:
        if value:
            raise serializers.ValidationError("tools are not supported yet.", code="unsupported_parameter")
        return value


class CompletionSerializer(SamplingSerializer):
    prompt = PromptField(max_items=64)
    echo = serializers.BooleanField(required=False, default=False)
    suffix = serializers.CharField(required=False, allow_null=True, allow_blank=True)


class EmbeddingSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=200)
    input = PromptField()
    encoding_format = serializers.ChoiceField(["float", "base64"], required=False, default="float")
    dimensions = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    user = serializers.CharField(required=False, allow_blank=True, max_length=256)


class TokenizeSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=200)
    content = serializers.CharField(allow_blank=True, trim_whitespace=False)
    add_special = serializers.BooleanField(required=False, default=False)


class DetokenizeSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=200)
    tokens = serializers.ListField(child=serializers.IntegerField(min_value=0), allow_empty=True)
