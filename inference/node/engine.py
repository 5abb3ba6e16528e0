"""Generation on one llama.cpp model: sampling, stop strings, UTF-8 and prompt-prefix reuse.

A `ModelWorker` owns its `Llama` objects and is the only thread that touches them; requests
reach it through a bounded queue and leave as events on the caller's asyncio loop.
"""

import asyncio
import codecs
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import Llama
from llama_cpp import _internals as internals
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import LlamaGrammar

logger = logging.getLogger(__name__)

PENALTY_LAST_N = 64


class EngineError(Exception):
    """A request the engine refuses; carries the OpenAI error fields."""

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_value", param: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


class QueueFull(Exception):
    pass


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 40
    min_p: float = 0.05
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: list[str] = field(default_factory=list)
    grammar: str | None = None  # GBNF text


@dataclass(slots=True)
class Delta:
    text: str


@dataclass(slots=True)
class Finished:
    reason: str  # "stop" | "length" | "cancelled"
    completion_tokens: int


def _stop_holdback(text: str, stops: list[str]) -> int:
    """How many trailing chars could still be the start of a stop string."""
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    return hold


class Generator:
    """Token generation on one chat Llama. Not thread-safe: used only on its worker thread."""

    def __init__(self, llama: Llama):
        self.llama = llama
        self.n_ctx = llama.n_ctx()
        self.n_vocab = llama.n_vocab()
        self._vocab = llama._model.vocab
        template = llama.metadata.get("tokenizer.chat_template")
        self.formatter: Jinja2ChatFormatter | None = None
        if template:
            eos, bos = llama.token_eos(), llama.token_bos()
            self.formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llama._model.token_get_text(bos) if bos != -1 else "",
            )

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        if self.formatter is None:
            raise EngineError("This model has no chat template; use /v1/completions.", code="no_chat_template")
        try:
            prompt = self.formatter(messages=messages).prompt
        except Exception as exc:  # the template's own raise_exception() and Jinja errors
            raise EngineError(f"The chat template rejected the messages: {exc}", param="messages") from exc
        return self.llama.tokenize(prompt.encode(), add_bos=False, special=True)

    def text_prompt(self, prompt: str) -> list[int]:
        return self.llama.tokenize(prompt.encode(), add_bos=True, special=False)

    def check_tokens(self, tokens: list[int], *, param: str = "prompt") -> None:
        if any(t < 0 or t >= self.n_vocab for t in tokens):
            raise EngineError(f"Token ids must be in [0, {self.n_vocab}).", param=param)

    def check_fits(self, n_prompt: int, *, param: str = "messages") -> None:
        if n_prompt >= self.n_ctx:
            raise EngineError(
                f"This model's maximum context length is {self.n_ctx} tokens; the prompt has {n_prompt}.",
                code="context_length_exceeded",
                param=param,
            )

    def detokenize(self, tokens: list[int]) -> str:
        return self.llama.detokenize(tokens).decode("utf-8", errors="replace")

    def _sampler(self, params: SamplingParams) -> internals.LlamaSampler:
        sampler = internals.LlamaSampler()
        if params.logit_bias:
            sampler.add_logit_bias(self.n_vocab, params.logit_bias)
        sampler.add_penalties(
            self.n_vocab, PENALTY_LAST_N, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
        )
        if params.grammar:
            try:
                grammar = LlamaGrammar.from_string(params.grammar, verbose=False)
            except Exception as exc:
                raise EngineError(f"Invalid grammar: {exc}", param="response_format") from exc
            sampler.add_grammar(self.llama._model, grammar)
        if params.temperature == 0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(params.top_k if params.top_k > 0 else self.n_vocab)
            sampler.add_top_p(params.top_p, 1)
            sampler.add_min_p(params.min_p, 1)
            sampler.add_temp(params.temperature)
            sampler.add_dist(params.seed if params.seed is not None else random.getrandbits(32))
        return sampler

    def _prefill(self, tokens: list[int], *, reuse: bool) -> None:
        """Evaluate the prompt, keeping the KV cache of the prefix it shares with the last request."""
        llama = self.llama
        cached = llama.input_ids[: llama.n_tokens] if reuse else []
        shared = 0
        for a, b in zip(cached, tokens):
            if a != b:
                break
            shared += 1
        shared = min(shared, len(tokens) - 1)  # re-evaluate at least one token to get fresh logits
        if shared > 0 and llama._ctx.kv_cache_seq_rm(-1, shared, -1):
            llama.n_tokens = shared
        else:
            llama.reset()
            shared = 0
        llama.eval(tokens[shared:])

    def generate(
        self, prompt: list[int], params: SamplingParams, cancelled: Callable[[], bool]
    ) -> Iterator[Delta | Finished]:
        """Yield text deltas then one Finished; stop strings are cut, never emitted."""
        self.check_fits(len(prompt))
        budget = self.n_ctx - len(prompt)
        max_tokens = min(params.max_tokens, budget) if params.max_tokens else budget
        sampler = self._sampler(params)
        # A seeded request evaluates its whole prompt: logits from a partial re-evaluation differ in
        # the last bits from a full one, enough to change a sampled token, and seeds must reproduce.
        self._prefill(prompt, reuse=params.seed is None)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = [s for s in params.stop if s]
        text, sent, count, reason, cut = "", 0, 0, "length", False
        try:
            while count < max_tokens:
                if cancelled():
                    reason = "cancelled"
                    break
                token = sampler.sample(self.llama._ctx, -1)
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    reason = "stop"
                    break
                count += 1
                text += decoder.decode(self.llama.detokenize([token]))
                # Held-back text never contains a whole stop, so a stop can only start at or after `sent`.
                hits = [i for i in (text.find(s, sent) for s in stops) if i >= 0]
                if hits:
                    text, reason, cut = text[: min(hits)], "stop", True
                    break
                end = len(text) - _stop_holdback(text, stops) if stops else len(text)
                if end > sent:
                    yield Delta(text[sent:end])
                    sent = end
                if count < max_tokens:
                    self.llama.eval([token])
            if reason != "cancelled":
                tail = text[sent:] if cut else text[sent:] + decoder.decode(b"", final=True)
                if tail:
                    yield Delta(tail)
        finally:
            sampler.close()
        yield Finished(reason=reason, completion_tokens=count)


class Job:
    """One request in the worker: its work function and the events it sends back to the loop."""

    def __init__(self, work: Callable[["Job"], None], loop: asyncio.AbstractEventLoop):
        self.work = work
        self.loop = loop
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self._cancelled = threading.Event()

    def emit(self, event: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def cancel(self) -> None:
        self._cancelled.set()

    def cancelled(self) -> bool:
        return self._cancelled.is_set()


_DONE = object()


@dataclass(slots=True)
class ModelSpec:
    name: str
    path: Path
    n_ctx: int
    embeddings: bool
    n_threads: int | None = None


class ModelWorker:
    """One loaded model: its Llama objects, a bounded queue and the thread that runs its jobs."""

    def __init__(self, spec: ModelSpec, *, queue_depth: int):
        self.spec = spec
        self.generator: Generator | None = None
        self.embedder: Llama | None = None
        self.ready = False
        self.inflight = 0
        self.last_used = 0.0  # epoch seconds of the last request, for idle eviction
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_depth)
        self._thread = threading.Thread(target=self._run, name=f"engine-{spec.name}", daemon=True)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def load(self) -> None:
        """Load the weights (chat, and a mean-pooling twin for embeddings), warm up, start the thread."""
        started = time.monotonic()
        common = {"n_ctx": self.spec.n_ctx, "verbose": False, "n_threads": self.spec.n_threads}
        llama = Llama(model_path=str(self.spec.path), **common)
        self.generator = Generator(llama)
        if self.spec.embeddings:
            self.embedder = Llama(
                model_path=str(self.spec.path),
                embedding=True,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                **common,
            )
        # Warm-up: the first decode allocates compute buffers; keep that off the first request.
        for _ in self.generator.generate(self.generator.text_prompt("Hello"), SamplingParams(max_tokens=2, temperature=0), lambda: False):
            pass
        if self.embedder is not None:
            self.embedder.embed("Hello")
        self._thread.start()
        self.ready = True
        logger.info("Model %s ready in %.1fs", self.spec.name, time.monotonic() - started, extra={"model": self.spec.name})

    def submit(self, job: Job) -> None:
        self.last_used = time.time()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull() from None

    def stop(self) -> None:
        self.ready = False
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            self.inflight += 1
            try:
                if not job.cancelled():
                    job.work(job)
            except EngineError as exc:
                job.emit(exc)
            except Exception as exc:
                logger.exception("Engine failure in %s", self.spec.name)
                job.emit(EngineError(f"Engine failure: {exc}", status=500, code="engine_error"))
            finally:
                self.inflight -= 1
                job.emit(_DONE)


DONE = _DONE
