"""The node's internal HTTP endpoint (aiohttp): OpenAI-shaped inference on the loaded models.

Only gateways call it, with the node token. The gateway has already validated the request
shape; this layer checks what needs the model (context length, token ids, templates).
"""

import asyncio
import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from .engine import DONE, Delta, EngineError, Job, ModelWorker, QueueFull
from .openai import Choice, Shape, embedding_item, sampling_params, usage
from .telemetry import percentile

logger = logging.getLogger(__name__)

USAGE_COMMENT = b": usage "
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def error_json(status: int, message: str, *, type_: str, code: str, param: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def engine_error(exc: EngineError) -> web.Response:
    type_ = "invalid_request_error" if exc.status < 500 else "server_error"
    return error_json(exc.status, str(exc), type_=type_, code=exc.code, param=exc.param)


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def usage_comment(counts: dict[str, int]) -> bytes:
    return USAGE_COMMENT + orjson.dumps(counts) + b"\n\n"


class NodeApp:
    """Routes and handlers; `workers` maps model name to its loaded ModelWorker."""

    def __init__(self, *, name: str, token: str, workers: dict[str, ModelWorker]):
        self.name = name
        self.token = token
        self.workers = workers
        self.draining = False

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/internal/health", self.health)
        app.router.add_post("/internal/v1/chat/completions", self.chat_completions)
        app.router.add_post("/internal/v1/completions", self.completions)
        app.router.add_post("/internal/v1/embeddings", self.embeddings)
        app.router.add_post("/internal/v1/tokenize", self.tokenize)
        app.router.add_post("/internal/v1/detokenize", self.detokenize)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(secret.encode(), self.token.encode()):
            return error_json(401, "Node token required.", type_="authentication_error", code="invalid_node_token")
        return await handler(request)

    def stats(self) -> dict[str, Any]:
        workers = list(self.workers.values())
        return {
            "inflight": sum(w.inflight for w in workers),
            "queued": sum(w.queued for w in workers),
            "slots": sum(len(w.engine.slots) for w in workers if w.engine is not None),
            "models": {name: {"ready": w.ready} for name, w in self.workers.items()},
            "tokens_per_s": round(sum(w.tokens_per_s() for w in workers), 2),
            "ttft_p95_ms": round(1000 * percentile([t for w in workers for t in w.ttfts()], 0.95), 1),
        }

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"node": self.name, **self.stats()}), content_type="application/json")

    # --- helpers -----------------------------------------------------------------------

    def _worker(self, body: dict[str, Any]) -> ModelWorker:
        worker = self.workers.get(str(body.get("model")))
        if worker is None or not worker.ready:
            raise EngineError(f"Model '{body.get('model')}' is not loaded on this node.", status=404, code="model_not_loaded", param="model")
        return worker

    async def _start(self, worker: ModelWorker, work: Callable[[Job], None]) -> tuple[Job, Any]:
        """Queue the work and wait for its first event (a start marker or an error)."""
        job = Job(work, asyncio.get_running_loop())
        try:
            worker.submit(job)
        except QueueFull:
            raise EngineError("The node's queue for this model is full.", status=429, code="node_queue_full") from None
        first = await job.events.get()
        if isinstance(first, EngineError):
            raise first
        return job, first

    async def _run(self, request: web.Request, handler: Callable[[dict[str, Any], str], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict):
                raise EngineError("Expected a JSON object.")
        except orjson.JSONDecodeError:
            return error_json(400, "Invalid JSON.", type_="invalid_request_error", code="invalid_json")
        except EngineError as exc:
            return engine_error(exc)
        request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex
        try:
            return await handler(body, request_id)
        except EngineError as exc:
            if exc.status == 429:
                return error_json(429, str(exc), type_="rate_limit_error", code=exc.code, headers={"Retry-After": "1"})
            return engine_error(exc)

    # --- completions ---------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._run(request, lambda body, rid: self._generate(request, body, rid, chat=True))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._run(request, lambda body, rid: self._generate(request, body, rid, chat=False))

    async def _generate(self, request: web.Request, body: dict[str, Any], request_id: str, *, chat: bool) -> web.StreamResponse:
        worker = self._worker(body)
        gen = worker.generator
        assert gen is not None
        params = sampling_params(body)
        n = int(body.get("n") or 1)
        shape = Shape(kind="chat" if chat else "text", request_id=request_id, model=worker.spec.name)

        def prepare() -> list[list[int]]:
            if chat:
                prompts = [gen.chat_prompt(body["messages"])]
            else:
                prompts = []
                for item in body["prompt"]:
                    tokens = gen.text_prompt(item) if isinstance(item, str) else list(item)
                    gen.check_tokens(tokens)
                    prompts.append(tokens)
            for tokens in prompts:
                gen.check_fits(len(tokens), param="messages" if chat else "prompt")
            return prompts

        # Templates and tokenization run off the loop: a long prompt must not stall other streams.
        prompts = await asyncio.to_thread(prepare)
        try:
            job = worker.generate(
                prompts,
                params,
                loop=asyncio.get_running_loop(),
                n=n,
                echo=bool(body.get("echo")) and not chat,
                suffix=(body.get("suffix") or "") if not chat else "",
            )
        except QueueFull:
            raise EngineError("The node's queue for this model is full.", status=429, code="node_queue_full") from None
        prompt_tokens = sum(len(t) for t in prompts)
        try:
            if _wants_stream(body):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                return await self._stream(request, job, shape, prompt_tokens, include_usage)
            return await self._collect(job, shape, prompt_tokens, n * len(prompts))
        finally:
            job.cancel()  # a no-op when finished; frees the slots when the gateway went away

    async def _collect(self, job: Job, shape: Shape, prompt_tokens: int, n_choices: int) -> web.Response:
        choices = [Choice() for _ in range(n_choices)]
        while (event := await job.events.get()) is not DONE:
            if isinstance(event, EngineError):
                raise event
            index, item = event
            if isinstance(item, Delta):
                choice = choices[index]
                if item.logprobs is not None:
                    if choice.logprobs is None:
                        choice.logprobs, choice.echo_len = [], sum(len(t) for t in choice.text)
                    choice.logprobs.extend(item.logprobs)
                choice.text.append(item.text)
            else:
                choices[index].finish_reason = item.reason
                choices[index].completion_tokens = item.completion_tokens
        body = shape.complete(choices, usage(prompt_tokens, sum(c.completion_tokens for c in choices)))
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _stream(self, request: web.Request, job: Job, shape: Shape, prompt_tokens: int, include_usage: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        started: set[int] = set()
        offsets: dict[int, int] = {}  # chars sent per choice, for text-completion logprob offsets
        completion_tokens = 0
        while (event := await job.events.get()) is not DONE:
            if isinstance(event, EngineError):
                await response.write(sse({"error": {"message": str(event), "type": "server_error", "param": None, "code": event.code}}))
                break
            index, item = event
            first = index not in started
            started.add(index)
            if first and shape.chat:
                await response.write(sse(shape.chunk(index, text="", first=True)))
            if isinstance(item, Delta):
                offset = offsets.get(index, 0)
                offsets[index] = offset + len(item.text)
                await response.write(sse(shape.chunk(index, text=item.text, logprobs=item.logprobs, offset=offset)))
            else:
                completion_tokens += item.completion_tokens
                await response.write(sse(shape.chunk(index, finish_reason=item.reason)))
        else:
            if include_usage:
                await response.write(sse(shape.usage_chunk(usage(prompt_tokens, completion_tokens))))
        # An SSE comment (clients ignore it) so the gateway can settle quotas on every stream.
        await response.write(usage_comment(usage(prompt_tokens, completion_tokens)))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    # --- embeddings and tokens -----------------------------------------------------------

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._run(request, self._embeddings)

    async def _embeddings(self, body: dict[str, Any], request_id: str) -> web.Response:
        worker = self._worker(body)
        embedder = worker.embedder
        if embedder is None:
            raise EngineError(f"Model '{worker.spec.name}' does not serve embeddings.", code="embeddings_not_supported", param="model")
        dimensions = body.get("dimensions")
        if dimensions and dimensions != embedder.n_embd():
            raise EngineError(f"This model only produces {embedder.n_embd()} dimensions.", param="dimensions")
        n_ctx = embedder.n_ctx()

        def work(job: Job) -> None:
            texts = []
            for i, item in enumerate(body["input"]):
                if isinstance(item, str):
                    tokens = embedder.tokenize(item.encode(), add_bos=True)
                    text = item
                else:
                    if any(t >= embedder.n_vocab() for t in item):
                        raise EngineError(f"Token ids must be below {embedder.n_vocab()}.", param=f"input[{i}]")
                    tokens, text = item, embedder.detokenize(item).decode("utf-8", errors="replace")
                if len(tokens) > n_ctx:
                    raise EngineError(
                        f"Input {i} has {len(tokens)} tokens; this model's maximum context length is {n_ctx}.",
                        code="context_length_exceeded",
                        param="input",
                    )
                texts.append(text)
            vectors, count = embedder.embed(texts, normalize=True, return_count=True)
            job.emit(("done", vectors, count))

        _, (_, vectors, count) = await self._start(worker, work)
        fmt = body.get("encoding_format") or "float"
        out = {
            "object": "list",
            "data": [embedding_item(i, v, fmt) for i, v in enumerate(vectors)],
            "model": worker.spec.name,
            "usage": {"prompt_tokens": count, "total_tokens": count},
        }
        return web.Response(body=orjson.dumps(out), content_type="application/json")

    async def tokenize(self, request: web.Request) -> web.StreamResponse:
        async def handle(body: dict[str, Any], request_id: str) -> web.Response:
            worker = self._worker(body)
            assert worker.generator is not None
            content, add_special = str(body.get("content", "")), bool(body.get("add_special"))
            tokens = await asyncio.to_thread(worker.generator.tokenize, content, add_special=add_special)
            return web.Response(body=orjson.dumps({"model": worker.spec.name, "tokens": tokens}), content_type="application/json")

        return await self._run(request, handle)

    async def detokenize(self, request: web.Request) -> web.StreamResponse:
        async def handle(body: dict[str, Any], request_id: str) -> web.Response:
            worker = self._worker(body)
            gen = worker.generator
            assert gen is not None
            tokens = list(body.get("tokens") or [])
            gen.check_tokens(tokens, param="tokens")
            text = await asyncio.to_thread(gen.detokenize, tokens)
            return web.Response(body=orjson.dumps({"model": worker.spec.name, "content": text}), content_type="application/json")

        return await self._run(request, handle)


def _wants_stream(body: dict[str, Any]) -> bool:
    return bool(body.get("stream"))

