"""Continuous-batching generation on one llama.cpp model, plus a side worker for embeddings.

A `ModelWorker` owns one llama.cpp context with N sequence slots and an engine thread that is the
only one to touch it. Each step decodes the next token of every generating sequence in one
`llama_decode`, samples each with its own sampler chain, then prefills waiting prompts chunk by
chunk, so new requests join between steps and a long prompt never stalls the others for long.
Requests reach it through a bounded queue and leave as events on the caller's asyncio loop.

Determinism: every slot has its own KV stream (`kv_unified = false`), decode steps carry one
token per sequence, and prompts prefill alone in chunks aligned to multiples of PREFILL_CHUNK
from position 0. A sequence's logits are then bit-identical whatever else shares the batch, and a
reused prefix (cut to a chunk boundary inside the previous prompt) holds exactly the KV a fresh
prefill would compute: greedy output does not depend on load, and a seed reproduces.
A whole prompt seen before needs no prefill at all: its KV and final logits, as that aligned
prefill left them, come back from a RAM prompt cache into whichever slot is free.
"""

import asyncio
import codecs
import ctypes
import logging
import os
import queue
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals
from llama_cpp import Llama
from llama_cpp._logger import set_verbose
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import LlamaGrammar

from .telemetry import EngineTelemetry

logger = logging.getLogger(__name__)

PENALTY_LAST_N = 64
# Prefill granularity and the unit of prefix reuse. On CPUs a prompt token costs about the same
# in a chunk of 16 as of 512, so a small chunk loses little speed and lets short prompts reuse.
PREFILL_CHUNK = 16
# Prompt tokens prefilled per step, across waiting sequences, between two decode steps.
PREFILL_BUDGET = 256
MAX_TOP_LOGPROBS = 20
# Prompt tokens worth prefilling again rather than decoding in one more ubatch every step.
RUN_COST = 128
# Restoring a cached prompt's KV into a slot, in prompt tokens: a tie-breaker for the slot's own cache.
RESTORE_COST = 1
PROMPT_CACHE_BYTES = 256 * 1024 * 1024
PROMPT_CACHE_ENTRIES = 256


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
    logprobs: int | None = None  # None: off; else how many top alternatives per token


@dataclass(slots=True)
class TokenLogprob:
    token: str
    bytes: list[int]
    logprob: float
    top: list[tuple[str, list[int], float]]


@dataclass(slots=True)
class Delta:
    text: str
    logprobs: list[TokenLogprob] | None = None


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


def default_slots(model: internals.LlamaModel, n_ctx: int) -> int:
    """Sequence slots when not configured, from the cores and the KV cache's size."""
    # Up to 8 per core and 16 at most (beyond that a CPU step just gets longer), and no more
    # than fit a KV cache as large as the weights (1 GiB at least): every slot holds n_ctx cells.
    m = model.model
    n_head = max(1, llama_cpp.llama_model_n_head(m))
    kv_per_token = 2 * llama_cpp.llama_model_n_layer(m) * (llama_cpp.llama_model_n_embd(m) // n_head) * llama_cpp.llama_model_n_head_kv(m) * 2
    budget = max(1 << 30, llama_cpp.llama_model_size(m))
    fit = budget // max(1, kv_per_token * n_ctx)
    return int(max(1, min(16, 8 * (os.cpu_count() or 1), fit)))


class Generator:
    """Tokenization, chat templates and sampler chains of one model; thread-safe (read-only vocab)."""

    def __init__(self, model: internals.LlamaModel, *, n_ctx: int):
        self.model = model
        self.n_ctx = n_ctx
        self.n_vocab = model.n_vocab()
        self.vocab = model.vocab
        template = model.metadata().get("tokenizer.chat_template")
        self.formatter: Jinja2ChatFormatter | None = None
        if template:
            eos, bos = model.token_eos(), model.token_bos()
            self.formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=model.token_get_text(eos) if eos != -1 else "",
                bos_token=model.token_get_text(bos) if bos != -1 else "",
            )

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        if self.formatter is None:
            raise EngineError("This model has no chat template; use /v1/completions.", code="no_chat_template")
        try:
            prompt = self.formatter(messages=messages).prompt
        except Exception as exc:  # the template's own raise_exception() and Jinja errors
            raise EngineError(f"The chat template rejected the messages: {exc}", param="messages") from exc
        return self.model.tokenize(prompt.encode(), add_bos=False, special=True)

    def text_prompt(self, prompt: str) -> list[int]:
        return self.model.tokenize(prompt.encode(), add_bos=True, special=False)

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        return self.model.tokenize(text.encode(), add_bos=add_special, special=True)

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

    def piece(self, token: int) -> bytes:
        return self.model.detokenize([token])

    def detokenize(self, tokens: list[int]) -> str:
        return self.model.detokenize(tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def sampler(self, params: SamplingParams, *, seed: int | None = None) -> internals.LlamaSampler:
        """Build the request's llama.cpp sampler chain (bias, penalties, then the draw)."""
        sampler = internals.LlamaSampler()
        if params.logit_bias:
            sampler.add_logit_bias(self.n_vocab, params.logit_bias)
        sampler.add_penalties(
            self.n_vocab, PENALTY_LAST_N, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
        )
        if params.temperature == 0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(params.top_k if params.top_k > 0 else self.n_vocab)
            sampler.add_top_p(params.top_p, 1)
            sampler.add_min_p(params.min_p, 1)
            sampler.add_temp(params.temperature)
            sampler.add_dist(seed if seed is not None else random.getrandbits(32))
        return sampler

    def grammar(self, params: SamplingParams) -> internals.LlamaSampler | None:
        """The request's grammar as a sampler of its own, kept out of the chain (see Engine._draw)."""
        if not params.grammar:
            return None
        try:
            grammar = LlamaGrammar.from_string(params.grammar, verbose=False)
        except Exception as exc:
            raise EngineError(f"Invalid grammar: {exc}", param="response_format") from exc
        sampler = internals.LlamaSampler()
        sampler.add_grammar(self.model, grammar)
        return sampler


class Job:
    """One request: side work (embeddings) or generated sequences, and the events sent back to its loop."""

    def __init__(self, work: Callable[["Job"], None] | None, loop: asyncio.AbstractEventLoop):
        self.work = work
        self.loop = loop
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.remaining = 0  # sequences still running; touched only by the engine thread
        self.failed = False
        self._cancelled = threading.Event()

    def emit(self, event: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is waiting for this request any more
            pass

    def cancel(self) -> None:
        self._cancelled.set()

    def cancelled(self) -> bool:
        return self._cancelled.is_set()


_DONE = object()
DONE = _DONE


def _deliver(items: list[tuple[asyncio.Queue[Any], Any]]) -> None:
    for events, event in items:
        events.put_nowait(event)


class Sequence:
    """One generated choice: its prompt, sampler, position in its slot and the text produced so far."""

    def __init__(
        self,
        *,
        job: Job,
        index: int,
        prompt: list[int],
        params: SamplingParams,
        sampler: internals.LlamaSampler,
        grammar: internals.LlamaSampler | None = None,
        max_tokens: int,
        prefix: str = "",
        suffix: str = "",
    ):
        self.job = job
        self.index = index
        self.prompt = prompt
        self.params = params
        self.sampler = sampler
        self.grammar = grammar
        self.max_tokens = max_tokens
        self.prefix = prefix
        self.suffix = suffix
        self.slot: "Slot | None" = None
        self.n_past = 0  # tokens of this sequence in its slot's KV
        self.pending: int | None = None  # sampled, not yet decoded
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = [s for s in params.stop if s]
        self.text = ""
        self.sent = 0
        self.count = 0
        self.queued_at = time.monotonic()  # for the time to first token; 0 once it is recorded
        # Logprob entries not yet sent, each with the offset in `text` where its token starts.
        self.logprobs: list[tuple[int, TokenLogprob]] = []


@dataclass(slots=True)
class Slot:
    id: int
    seq: Sequence | None = None
    # Prompt tokens in this slot's KV that were computed by aligned prefill chunks: the only
    # prefix another request may reuse without changing its logits.
    cached: list[int] = field(default_factory=list)
    # The logits after the last token of `cached` when it is a whole prompt: the same prompt
    # again then needs no prefill at all, and samples its first token from exactly these.
    logits: np.ndarray | None = None


def _shared_prefix(a: Iterable[int], b: Iterable[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _reusable(cached: SequenceOf[int], has_logits: bool, prompt: list[int]) -> int:
    """How many tokens of `prompt` a cached prefix serves without changing its logits."""
    # Cut to a chunk boundary and short of the last prompt token, whose logits are needed,
    # unless the cache holds this very prompt and its final logits.
    shared = _shared_prefix(cached, prompt)
    if shared == len(prompt) == len(cached) and has_logits:
        return shared
    return min(shared, len(prompt) - 1) // PREFILL_CHUNK * PREFILL_CHUNK


class PromptCache:
    """Whole prompts' KV (llama.cpp sequence state) and final logits in RAM, least recently used out first.

    Restoring a prompt into any free slot costs a copy of its own cells (~0.2 ms for 14 tokens of
    SmolLM2-135M), so a repeated prompt needs no prefill even when the slot that computed it is
    busy, or not next to the running ones. The bytes are exactly what the aligned prefill wrote.
    """

    def __init__(self, budget: int):
        self.budget = budget
        self.size = 0
        self._entries: OrderedDict[tuple[int, ...], tuple[ctypes.Array[ctypes.c_uint8], np.ndarray]] = OrderedDict()

    def fits(self, size: int) -> bool:
        return 0 < size <= self.budget // 8

    def put(self, prompt: tuple[int, ...], state: ctypes.Array[ctypes.c_uint8], logits: np.ndarray) -> None:
        old = self._entries.pop(prompt, None)
        if old is not None:
            self.size -= len(old[0])
        self._entries[prompt] = (state, logits)
        self.size += len(state)
        while self.size > self.budget or len(self._entries) > PROMPT_CACHE_ENTRIES:
            _, (evicted, _) = self._entries.popitem(last=False)
            self.size -= len(evicted)

    def best(self, prompt: list[int]) -> tuple[tuple[int, ...] | None, int]:
        """The entry serving most of `prompt`, and how many tokens it serves."""
        best, best_keep = None, 0
        for cached in self._entries:
            keep = _reusable(cached, True, prompt)
            if keep > best_keep:
                best, best_keep = cached, keep
        return best, best_keep

    def take(self, prompt: tuple[int, ...]) -> tuple[ctypes.Array[ctypes.c_uint8], np.ndarray]:
        self._entries.move_to_end(prompt)
        return self._entries[prompt]


def context_params(*, slots: int, n_ctx: int, n_threads: int) -> llama_cpp.llama_context_params:
    """The engine's llama.cpp context: one KV stream of n_ctx cells per slot, flash attention, a prefill chunk per batch."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = -(-n_ctx // 256) * 256 * slots  # llama.cpp pads each stream to 256 cells
    params.n_seq_max = slots
    params.n_batch = params.n_ubatch = max(PREFILL_CHUNK, slots)
    params.n_threads = params.n_threads_batch = n_threads
    params.kv_unified = False
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    params.no_perf = True
    return params


class Engine:
    """The continuous-batching loop over one context with `slots` KV streams; runs on its own thread."""

    def __init__(self, generator: Generator, *, name: str, slots: int, n_ctx: int, n_threads: int, queue_depth: int):
        self.generator = generator
        self.name = name
        self.queue_depth = queue_depth
        params = context_params(slots=slots, n_ctx=n_ctx, n_threads=n_threads)
        self.ctx = internals.LlamaContext(model=generator.model, params=params, verbose=False)
        self.memory = llama_cpp.llama_get_memory(self.ctx.ctx)
        self.batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
        self.slots = [Slot(id=i) for i in range(slots)]
        self.active: list[Sequence] = []
        self.waiting: deque[Sequence] = deque()
        self.reused_tokens = 0  # prompt tokens served from a slot's cache instead of prefilled
        self.restored_prompts = 0  # prompts whose KV came back from the prompt cache
        self.prompt_cache = PromptCache(PROMPT_CACHE_BYTES)
        self.telemetry = EngineTelemetry()
        # Events of one step go to each loop in one call: a wake-up per token would keep the loop
        # thread holding the GIL just when this thread returns from a llama.cpp call and needs it.
        self._outbox: list[tuple[Job, Any]] = []
        self._pieces: dict[int, bytes] = {}
        self._candidates = internals.LlamaTokenDataArray(n_vocab=generator.n_vocab)
        self._one = internals.LlamaTokenDataArray(n_vocab=1)
        self._eog: dict[int, bool] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)

    # --- called from other threads -----------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, seqs: list[Sequence]) -> None:
        """Queue all of a request's sequences, or none when the queue cannot take them."""
        with self._cond:
            if self._stopping:
                raise EngineError("The model is being unloaded.", status=503, code="model_unloading")
            if len(self.waiting) + len(seqs) > self.queue_depth:
                raise QueueFull()
            for seq in seqs:
                seq.job.remaining += 1
            self.waiting.extend(seqs)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self.close()  # the KV cache is the node's largest allocation

    def close(self) -> None:
        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None
        self.ctx.close()

    # --- the engine thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self.waiting and not self.active:
                    self._cond.wait()
                if self._stopping:
                    break
                self._admit()
            try:
                self._step()
            except Exception as exc:
                logger.exception("Engine step failed in %s", self.name, extra={"model": self.name})
                error = EngineError(f"Engine failure: {exc}", status=500, code="engine_error")
                for seq in list(self.active):
                    self._fail(seq, error)
                llama_cpp.llama_memory_clear(self.memory, True)
                for slot in self.slots:
                    slot.cached, slot.logits = [], None
            self._flush()
        error = EngineError("The model was unloaded.", status=503, code="model_unloading")
        with self._cond:
            leftovers = [*self.active, *self.waiting]
            self.waiting.clear()
        for seq in leftovers:
            self._fail(seq, error)
        self._flush()

    def _emit(self, job: Job, event: Any) -> None:
        self._outbox.append((job, event))

    def _flush(self) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Any], Any]]] = {}
        for job, event in self._outbox:
            by_loop.setdefault(job.loop, []).append((job.events, event))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop is closed: nobody is waiting for these requests any more
                pass

    def _admit(self) -> None:
        """Move waiting sequences into free slots (called with the lock held)."""
        if any(seq.job.cancelled() for seq in self.waiting):
            # Abandoned requests leave the queue now, not when a slot frees, so they stop counting
            # against its bound.
            for seq in [seq for seq in self.waiting if seq.job.cancelled()]:
                self.waiting.remove(seq)
                self._finish(seq, "cancelled")
        while self.waiting:
            free = [slot for slot in self.slots if slot.seq is None]
            if not free:
                return
            seq = self.waiting.popleft()
            if seq.job.cancelled():
                self._finish(seq, "cancelled")
                continue
            try:
                self._place(seq, free)
            except Exception as exc:
                # One request that cannot be placed fails alone; the engine thread and the rest go on.
                logger.exception("Admitting a request failed in %s", self.name, extra={"model": self.name})
                self._fail(seq, EngineError(f"Engine failure: {exc}", status=500, code="engine_error"))

    def _place(self, seq: Sequence, free: list[Slot]) -> None:
        """Put `seq` in the cheapest free slot, restoring or keeping what KV prefix it can."""
        best, entry, keep = self._pick_slot(seq, free)
        try:
            if entry is not None:
                state, logits = self.prompt_cache.take(entry)
                llama_cpp.llama_memory_seq_rm(self.memory, best.id, -1, -1)
                if llama_cpp.llama_state_seq_set_data(self.ctx.ctx, state, len(state), best.id):
                    best.cached, best.logits = list(entry), logits
                    self.restored_prompts += 1
                else:
                    best.cached, best.logits, keep = [], None, 0
            if not llama_cpp.llama_memory_seq_rm(self.memory, best.id, keep, -1):
                llama_cpp.llama_memory_seq_rm(self.memory, best.id, -1, -1)
                keep = 0
        except Exception:
            # The slot's KV no longer matches what it says it caches: start it empty.
            best.cached, best.logits = [], None
            llama_cpp.llama_memory_seq_rm(self.memory, best.id, -1, -1)
            raise
        best.cached = best.cached[:keep]
        if keep < len(seq.prompt):
            best.logits = None
        self.reused_tokens += keep
        best.seq = seq
        seq.slot = best
        seq.n_past = keep
        self.active.append(seq)
        if seq.prefix:
            self._emit(seq.job, (seq.index, Delta(seq.prefix)))

    def _pick_slot(self, seq: Sequence, free: list[Slot]) -> tuple[Slot, tuple[int, ...] | None, int]:
        """Pick the cheapest free slot for `seq`, and the prompt cache entry to restore in it first (or None).

        Returns them with how many cached prompt tokens the sequence keeps.
        """
        # Cost: prompt tokens left to prefill, RESTORE_COST when the prefix comes from the
        # prompt cache, plus RUN_COST for each extra run of consecutive busy slots, since
        # llama.cpp decodes each run as its own ubatch, every step.
        n = len(seq.prompt)
        entry, entry_keep = self.prompt_cache.best(seq.prompt)
        busy = {slot.id for slot in self.slots if slot.seq is not None}
        best, best_entry, best_keep, best_cost = free[0], None, 0, None
        for slot in free:
            keep, restore, extra = _reusable(slot.cached, slot.logits is not None, seq.prompt), None, 0
            if entry is not None and entry_keep - RESTORE_COST > keep:
                keep, restore, extra = entry_keep, entry, RESTORE_COST
            neighbours = (slot.id - 1 in busy) + (slot.id + 1 in busy)
            runs_added = (1 - neighbours) if busy else 0
            # On a tie, the slot caching least: other slots' prefixes stay for their next turn.
            cost = (n - keep + extra + RUN_COST * runs_added, len(slot.cached))
            if best_cost is None or cost < best_cost:
                best, best_entry, best_keep, best_cost = slot, restore, keep, cost
        return best, best_entry, best_keep

    def _step(self) -> None:
        for seq in list(self.active):
            if seq.job.cancelled():
                self._finish(seq, "cancelled")
        # A prompt found whole in a slot's cache needs no decode for its first token: it joins
        # this very step.
        cached = [seq for seq in self.active if seq.pending is None and seq.slot is not None and seq.n_past == len(seq.prompt)]
        if cached:
            for seq in cached:
                self._sample(seq, -1, seq.slot.logits)  # type: ignore[union-attr]
            self.telemetry.record_tokens(len(cached), now=time.monotonic())
            self._flush()
        # In slot order: llama.cpp only joins consecutive sequence ids into one ubatch.
        generating = sorted((seq for seq in self.active if seq.pending is not None), key=lambda seq: seq.slot.id)  # type: ignore[union-attr]
        if generating:
            self._decode_step(generating)
            self._flush()
        budget = PREFILL_BUDGET
        for seq in [seq for seq in self.active if seq.pending is None and seq.slot is not None]:
            while budget > 0 and seq.slot is not None and seq.pending is None:
                budget -= self._prefill_chunk(seq)
                self._flush()
            if budget <= 0:
                break

    def _decode_step(self, seqs: list[Sequence]) -> None:
        batch = self.batch
        for i, seq in enumerate(seqs):
            assert seq.slot is not None and seq.pending is not None
            batch.token[i] = seq.pending
            batch.pos[i] = seq.n_past
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq.slot.id
            batch.logits[i] = True
        batch.n_tokens = len(seqs)
        self._decode()
        for i, seq in enumerate(seqs):
            seq.n_past += 1
            seq.pending = None
            self._sample(seq, i)
        self.telemetry.record_tokens(len(seqs), now=time.monotonic())

    def _prefill_chunk(self, seq: Sequence) -> int:
        """Evaluate the prompt up to the next chunk boundary, alone; sample when it is complete."""
        assert seq.slot is not None
        start = seq.n_past
        end = min(len(seq.prompt), (start // PREFILL_CHUNK + 1) * PREFILL_CHUNK)
        batch = self.batch
        for i, pos in enumerate(range(start, end)):
            batch.token[i] = seq.prompt[pos]
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq.slot.id
            batch.logits[i] = False
        last = end == len(seq.prompt)
        batch.logits[end - start - 1] = last
        batch.n_tokens = end - start
        self._decode()
        seq.n_past = end
        seq.slot.cached = seq.prompt[:end]
        if last:
            seq.slot.logits = self._row(end - start - 1).copy()
            self._save_prompt(seq.slot)
            self._sample(seq, end - start - 1)
            self.telemetry.record_tokens(1, now=time.monotonic())
        return end - start

    def _save_prompt(self, slot: Slot) -> None:
        """Keep the slot's whole, just-prefilled prompt (KV and final logits) in the prompt cache."""
        size = llama_cpp.llama_state_seq_get_size(self.ctx.ctx, slot.id)
        if not self.prompt_cache.fits(size):
            return
        state = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(self.ctx.ctx, state, size, slot.id) == size:
            assert slot.logits is not None
            self.prompt_cache.put(tuple(slot.cached), state, slot.logits)

    def _decode(self) -> None:
        status = llama_cpp.llama_decode(self.ctx.ctx, self.batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")

    def _row(self, idx: int) -> np.ndarray:
        """The logits of batch row `idx` of the last decode, as a view."""
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx.ctx, idx), shape=(self.generator.n_vocab,))

    def _sample(self, seq: Sequence, idx: int, logits: np.ndarray | None = None) -> None:
        """Draw the sequence's next token from batch row `idx` (or `logits`); emit its text, or finish it."""
        token = self._draw(seq, idx, logits)
        if seq.queued_at:
            now = time.monotonic()
            self.telemetry.record_ttft(now - seq.queued_at, now=now)
            seq.queued_at = 0.0
        if self._is_eog(token):
            self._finish(seq, "stop")
            return
        seq.count += 1
        piece = self._piece(token)
        if seq.params.logprobs is not None:
            row = self._row(idx) if logits is None else logits
            seq.logprobs.append((len(seq.text), self._logprob(token, piece, row, seq.params.logprobs)))
        seq.text += seq.decoder.decode(piece)
        # Held-back text never contains a whole stop, so a stop can only start at or after `sent`.
        hits = [i for i in (seq.text.find(s, seq.sent) for s in seq.stops) if i >= 0]
        if hits:
            seq.text = seq.text[: min(hits)]
            self._finish(seq, "stop", cut=True)
            return
        end = len(seq.text) - _stop_holdback(seq.text, seq.stops) if seq.stops else len(seq.text)
        if end > seq.sent:
            self._emit_text(seq, end)
        if seq.count >= seq.max_tokens:
            self._finish(seq, "length")
        else:
            seq.pending = token

    def _draw(self, seq: Sequence, idx: int, logits: np.ndarray | None = None) -> int:
        """Sample batch row `idx` (or `logits`) with the sequence's chain, within its grammar if it has one."""
        if seq.grammar is None and logits is None:
            return seq.sampler.sample(self.ctx, idx)
        if logits is None:
            logits = self._row(idx)
        # What llama_sampler_sample does with a context's row, on an array.
        cands = self._candidates
        cands.copy_logits(logits)
        cands.candidates.selected = -1
        llama_cpp.llama_sampler_apply(seq.sampler.sampler, ctypes.byref(cands.candidates))
        token = int(cands.candidates_data.id[cands.candidates.selected])
        if seq.grammar is None:
            seq.sampler.accept(token)
            return token
        # Applying a grammar to the whole vocabulary costs more than a decode step, and would slow
        # every sequence in the batch: check the unconstrained pick alone first, as llama.cpp's
        # own samplers do, and constrain the full distribution only when the pick is rejected.
        one = self._one
        one.candidates_data.id[0], one.candidates_data.logit[0], one.candidates_data.p[0] = token, 1.0, 0.0
        one.candidates.size, one.candidates.selected, one.candidates.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(seq.grammar.sampler, ctypes.byref(one.candidates))
        if not np.isfinite(one.candidates_data.logit[0]):
            cands.copy_logits(logits)
            llama_cpp.llama_sampler_apply(seq.grammar.sampler, ctypes.byref(cands.candidates))
            llama_cpp.llama_sampler_apply(seq.sampler.sampler, ctypes.byref(cands.candidates))
            token = int(cands.candidates_data.id[cands.candidates.selected])
        seq.grammar.accept(token)
        seq.sampler.accept(token)
        return token

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.generator.piece(token)
        return piece

    def _is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = self.generator.is_eog(token)
        return eog

    def _logprob(self, token: int, piece: bytes, row: np.ndarray, top: int) -> TokenLogprob:
        logits = row.astype(np.float64)
        peak = logits.max()
        logz = peak + np.log(np.exp(logits - peak).sum())
        alternatives: list[tuple[str, list[int], float]] = []
        if top > 0:
            best = np.argpartition(-logits, top)[:top]
            for t in best[np.argsort(-logits[best])]:
                raw = self._piece(int(t))
                alternatives.append((raw.decode("utf-8", errors="replace"), list(raw), float(logits[t] - logz)))
        return TokenLogprob(piece.decode("utf-8", errors="replace"), list(piece), float(logits[token] - logz), alternatives)

    def _emit_text(self, seq: Sequence, end: int) -> None:
        entries = None
        if seq.params.logprobs is not None:
            entries = [entry for _, entry in seq.logprobs]
            seq.logprobs.clear()
        self._emit(seq.job, (seq.index, Delta(seq.text[seq.sent : end], entries)))
        seq.sent = end

    def _finish(self, seq: Sequence, reason: str, *, cut: bool = False) -> None:
        if reason != "cancelled":
            if not cut:
                seq.text += seq.decoder.decode(b"", final=True)
            else:
                # Tokens that only make up the cut-off stop string are not part of the answer.
                seq.logprobs = [(start, entry) for start, entry in seq.logprobs if start < len(seq.text)]
            if len(seq.text) > seq.sent or seq.logprobs:
                self._emit_text(seq, len(seq.text))
            if seq.suffix:
                self._emit(seq.job, (seq.index, Delta(seq.suffix)))
        self._emit(seq.job, (seq.index, Finished(reason=reason, completion_tokens=seq.count)))
        self._release(seq)

    def _fail(self, seq: Sequence, error: EngineError) -> None:
        if not seq.job.failed:
            seq.job.failed = True
            self._emit(seq.job, error)
        self._release(seq)

    def _release(self, seq: Sequence) -> None:
        if seq.slot is not None:
            seq.slot.seq = None
            seq.slot = None
        if seq in self.active:
            self.active.remove(seq)
        seq.pending = None
        seq.sampler.close()
        if seq.grammar is not None:
            seq.grammar.close()
        seq.job.remaining -= 1
        if seq.job.remaining == 0:
            self._emit(seq.job, _DONE)


@dataclass(slots=True)
class ModelSpec:
    name: str
    path: Path
    n_ctx: int
    embeddings: bool
    n_threads: int | None = None
    slots: int | None = None  # sequence slots; None = AXS_NODE_SLOTS, else default_slots()


class ModelWorker:
    """One loaded model: its batching engine, and a bounded side queue and thread for embeddings."""

    def __init__(self, spec: ModelSpec, *, queue_depth: int):
        self.spec = spec
        self.queue_depth = queue_depth
        self.model: internals.LlamaModel | None = None
        self.generator: Generator | None = None
        self.engine: Engine | None = None
        self.embedder: Llama | None = None
        self.ready = False
        self.last_used = 0.0  # epoch seconds of the last request, for idle eviction
        self._side_busy = 0
        self._side: queue.Queue[Job | None] = queue.Queue(maxsize=queue_depth)
        self._side_thread = threading.Thread(target=self._run_side, name=f"embed-{spec.name}", daemon=True)

    @property
    def inflight(self) -> int:
        return (len(self.engine.active) if self.engine else 0) + self._side_busy

    @property
    def queued(self) -> int:
        return (len(self.engine.waiting) if self.engine else 0) + self._side.qsize()

    def tokens_per_s(self) -> float:
        return self.engine.telemetry.tokens_per_s() if self.engine else 0.0

    def ttfts(self) -> list[float]:
        return self.engine.telemetry.ttfts() if self.engine else []

    def _slots(self, model: internals.LlamaModel) -> int:
        if self.spec.slots:
            return self.spec.slots
        from django.conf import settings

        configured = int(getattr(settings, "AXS_NODE_SLOTS", 0) or 0) if settings.configured else 0
        return configured or default_slots(model, self.spec.n_ctx)

    def load(self) -> None:
        """Load the weights (and a mean-pooling twin for embeddings), warm up, start the threads."""
        started = time.monotonic()
        n_threads = self.spec.n_threads or os.cpu_count() or 1
        llama_cpp.llama_backend_init()
        set_verbose(False)  # llama.cpp's own log lines, as Llama(verbose=False) does
        self.model = internals.LlamaModel(
            path_model=str(self.spec.path), params=llama_cpp.llama_model_default_params(), verbose=False
        )
        self.generator = Generator(self.model, n_ctx=self.spec.n_ctx)
        slots = self._slots(self.model)
        self.engine = Engine(
            self.generator, name=self.spec.name, slots=slots, n_ctx=self.spec.n_ctx, n_threads=n_threads, queue_depth=self.queue_depth
        )
        if self.spec.embeddings:
            self.embedder = Llama(
                model_path=str(self.spec.path),
                embedding=True,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                n_ctx=self.spec.n_ctx,
                n_threads=n_threads,
                verbose=False,
            )
        self.engine.start()
        # Warm-up: the first decode allocates compute buffers; keep that off the first request.
        self._warm_up()
        self.engine.telemetry.clear()  # the heartbeat reports served requests only
        if self.embedder is not None:
            self.embedder.embed("Hello")
        self._side_thread.start()
        self.ready = True
        logger.info(
            "Model %s ready in %.1fs with %d slots",
            self.spec.name,
            time.monotonic() - started,
            slots,
            extra={"model": self.spec.name, "slots": slots, "n_threads": n_threads},
        )

    def _warm_up(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            job = self.generate([self.generator.text_prompt("Hello")], SamplingParams(max_tokens=2, temperature=0), loop=loop)  # type: ignore[union-attr]

            async def drain() -> None:
                while (await job.events.get()) is not _DONE:
                    pass

            loop.run_until_complete(asyncio.wait_for(drain(), timeout=60))
        finally:
            loop.close()

    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        *,
        loop: asyncio.AbstractEventLoop,
        n: int = 1,
        echo: bool = False,
        suffix: str = "",
    ) -> Job:
        """Queue n choices per prompt; the job gets (index, Delta | Finished) events, then DONE."""
        # Raises EngineError for a prompt the model cannot take, QueueFull when the queue is full.
        gen, engine = self.generator, self.engine
        assert gen is not None and engine is not None
        self.last_used = time.time()
        job = Job(None, loop)
        seqs: list[Sequence] = []
        try:
            for p, tokens in enumerate(prompts):
                gen.check_fits(len(tokens))
                budget = gen.n_ctx - len(tokens)
                max_tokens = min(params.max_tokens, budget) if params.max_tokens else budget
                prefix = gen.detokenize(tokens) if echo else ""
                for j in range(n):
                    # Choices of one seeded request differ from each other, and each reproduces.
                    seed = params.seed + j if params.seed is not None else None
                    seqs.append(
                        Sequence(
                            job=job,
                            index=p * n + j,
                            prompt=tokens,
                            params=params,
                            sampler=gen.sampler(params, seed=seed),
                            grammar=gen.grammar(params),
                            max_tokens=max_tokens,
                            prefix=prefix,
                            suffix=suffix,
                        )
                    )
            engine.submit(seqs)
        except BaseException:
            for seq in seqs:
                seq.sampler.close()
                if seq.grammar is not None:
                    seq.grammar.close()
            raise
        return job

    def submit(self, job: Job) -> None:
        """Queue side work (embeddings) on the side thread."""
        self.last_used = time.time()
        try:
            self._side.put_nowait(job)
        except queue.Full:
            raise QueueFull() from None

    def stop(self) -> None:
        self.ready = False
        if self._side_thread.is_alive():
            self._side.put(None)
            self._side_thread.join(timeout=30)
        if self.engine is not None:
            self.engine.stop()

    def _run_side(self) -> None:
        while (job := self._side.get()) is not None:
            self._side_busy += 1
            try:
                if not job.cancelled() and job.work is not None:
                    job.work(job)
            except EngineError as exc:
                job.emit(exc)
            except Exception as exc:
                logger.exception("Embedding failure in %s", self.spec.name, extra={"model": self.spec.name})
                job.emit(EngineError(f"Engine failure: {exc}", status=500, code="engine_error"))
            finally:
                self._side_busy -= 1
                job.emit(_DONE)
