"""OpenAI response shapes built from engine events (chat and text completions, embeddings)."""

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from .engine import MAX_TOP_LOGPROBS, EngineError, SamplingParams, TokenLogprob


def sampling_params(body: dict[str, Any]) -> SamplingParams:
    """Map the request's sampling fields to the engine's; unset fields keep OpenAI's defaults."""
    params = SamplingParams()
    for name in ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty", "repeat_penalty"):
        if body.get(name) is not None:
            setattr(params, name, body[name])
    params.max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    params.stop = list(body.get("stop") or [])
    params.logit_bias = {int(k): float(v) for k, v in (body.get("logit_bias") or {}).items()}
    params.logprobs = _logprobs(body)
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_object":
        params.grammar = JSON_GBNF
    elif response_format.get("type") == "json_schema":
        try:
            params.grammar = json_schema_to_gbnf(json.dumps(response_format["json_schema"]["schema"]))
        except Exception as exc:
            raise EngineError(f"Unsupported JSON schema: {exc}", param="response_format.json_schema") from exc
    return params


def _logprobs(body: dict[str, Any]) -> int | None:
    """How many alternatives per token the request wants, or None for no logprobs."""
    # Chat says `logprobs: true` and `top_logprobs: k`; legacy completions say `logprobs: k`.
    value = body.get("logprobs")
    if value is None or value is False:
        return None
    top = body.get("top_logprobs") if value is True else value
    if not isinstance(top, int) or isinstance(top, bool):
        top = 0
    return max(0, min(int(top), MAX_TOP_LOGPROBS))


@dataclass(slots=True)
class Choice:
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None
    echo_len: int = 0  # chars of echoed prompt before the first generated token


class Shape:
    """Chat or text-completion framing of the same engine output."""

    def __init__(self, *, kind: str, request_id: str, model: str, created: int | None = None):
        self.chat = kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + request_id
        self.model = model
        self.created = created or int(time.time())

    def _envelope(self, obj: str, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            out["usage"] = usage
        return out

    def chunk(
        self,
        index: int,
        *,
        text: str | None = None,
        finish_reason: str | None = None,
        first: bool = False,
        logprobs: list[TokenLogprob] | None = None,
        offset: int = 0,
    ) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": self.logprobs(logprobs, offset), "finish_reason": finish_reason}
            return self._envelope("chat.completion.chunk", [choice])
        choice = {"index": index, "text": text or "", "logprobs": self.logprobs(logprobs, offset), "finish_reason": finish_reason}
        return self._envelope("text_completion", [choice])

    def logprobs(self, entries: list[TokenLogprob] | None, offset: int = 0) -> dict[str, Any] | None:
        """The choice's `logprobs` object: per-token entries for chat, parallel lists for text."""
        if entries is None:
            return None
        if self.chat:
            content = [
                {
                    "token": e.token,
                    "logprob": e.logprob,
                    "bytes": e.bytes,
                    "top_logprobs": [{"token": t, "logprob": lp, "bytes": b} for t, b, lp in e.top],
                }
                for e in entries
            ]
            return {"content": content, "refusal": None}
        offsets = []
        for e in entries:
            offsets.append(offset)
            offset += len(e.token)
        return {
            "tokens": [e.token for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t: lp for t, _, lp in e.top} for e in entries],
            "text_offset": offsets,
        }

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return self._envelope("chat.completion.chunk" if self.chat else "text_completion", [], usage)

    def complete(self, choices: list[Choice], usage: dict[str, int]) -> dict[str, Any]:
        if self.chat:
            body = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": "".join(c.text)},
                    "logprobs": self.logprobs(c.logprobs),
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ]
            return self._envelope("chat.completion", body, usage)
        body = [
            {"index": i, "text": "".join(c.text), "logprobs": self.logprobs(c.logprobs, c.echo_len), "finish_reason": c.finish_reason}
            for i, c in enumerate(choices)
        ]
        return self._envelope("text_completion", body, usage)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def embedding_item(index: int, vector: list[float], encoding_format: str) -> dict[str, Any]:
    if encoding_format == "base64":
        value: Any = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    else:
        value = vector
    return {"object": "embedding", "index": index, "embedding": value}
