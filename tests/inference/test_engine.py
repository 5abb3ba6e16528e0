"""The batching node engine on the real bundled model, in-process (no HTTP)."""

import asyncio
import json
import os
import time
from dataclasses import dataclass, field

import pytest
from inference.node.openai import sampling_params
from inference.node.engine import (
    DONE,
    Delta,
    EngineError,
    Finished,
    Job,
    ModelSpec,
    ModelWorker,
    QueueFull,
    SamplingParams,
    _stop_holdback,
    default_slots,
)
from models_registry.services import bundled_model_path

SLOTS = 8
PROMPTS = [
    "The capital of France is",
    "Once upon a time, a small robot",
    "1, 2, 3, 4,",
    "The best way to cook rice is",
    "def fibonacci(n):",
    "My favourite season is autumn because",
    "Water boils at",
    "The three primary colours are",
]


@pytest.fixture(scope="module")
def worker():
    worker = ModelWorker(ModelSpec(name="t", path=bundled_model_path(), n_ctx=512, embeddings=False, slots=SLOTS), queue_depth=16)
    worker.load()
    yield worker
    worker.stop()


@dataclass
class Outcome:
    text: str = ""
    finished: Finished | None = None
    logprobs: list = field(default_factory=list)


async def collect(job: Job) -> dict[int, Outcome]:
    out: dict[int, Outcome] = {}
    while (event := await job.events.get()) is not DONE:
        if isinstance(event, EngineError):
            raise event
        index, item = event
        choice = out.setdefault(index, Outcome())
        if isinstance(item, Delta):
            choice.text += item.text
            choice.logprobs.extend(item.logprobs or [])
        else:
            choice.finished = item
    return out


def start(worker: ModelWorker, prompt: str | list[int], **params) -> Job:
    tokens = worker.generator.text_prompt(prompt) if isinstance(prompt, str) else prompt
    return worker.generate([tokens], SamplingParams(**params), loop=asyncio.get_running_loop())


async def run(worker: ModelWorker, prompt: str | list[int], **params) -> Outcome:
    return (await collect(start(worker, prompt, **params)))[0]


async def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("text", "stops", "held"),
    [("hello wor", ["world"], 3), ("hello", ["world"], 0), ("abc<|", ["<|end|>"], 2), ("ab", ["b", "bc"], 1)],
)
def test_stop_holdback_keeps_only_a_possible_stop_prefix(text, stops, held):
    assert _stop_holdback(text, stops) == held


async def test_each_sequence_of_a_batch_of_8_matches_its_output_alone(worker):
    alone = [(await run(worker, p, max_tokens=24, temperature=0)).text for p in PROMPTS]

    batch = await asyncio.gather(*(run(worker, p, max_tokens=24, temperature=0) for p in PROMPTS))

    assert [o.text for o in batch] == alone
    assert len(set(alone)) == len(PROMPTS)


async def test_a_seeded_request_reproduces_alone_and_under_load(worker):
    params = {"max_tokens": 24, "temperature": 1.0, "seed": 1234}
    first = await run(worker, PROMPTS[1], **params)

    again = await run(worker, PROMPTS[1], **params)
    loaded = await asyncio.gather(
        run(worker, PROMPTS[1], **params), *(run(worker, p, max_tokens=24, temperature=0.8) for p in PROMPTS[2:])
    )
    other_seed = await run(worker, PROMPTS[1], **{**params, "seed": 99})

    assert again.text == first.text
    assert loaded[0].text == first.text
    assert other_seed.text != first.text


async def test_a_shared_prompt_prefix_is_reused_without_changing_the_answer(worker):
    history = "A long conversation about the history of bread. " * 12
    fresh = await run(worker, history + "Question one:", max_tokens=12, temperature=0)
    reused_before = worker.engine.reused_tokens

    follow_up = await run(worker, history + "Question one:", max_tokens=12, temperature=0)

    assert worker.engine.reused_tokens - reused_before >= 64
    assert follow_up.text == fresh.text


async def test_the_same_short_prompt_again_skips_prefill_and_gives_the_same_answer(worker):
    prompt = "Twelve short words about a cat sat here:"  # shorter than one prefill chunk
    n_prompt = len(worker.generator.text_prompt(prompt))
    fresh = await run(worker, prompt, max_tokens=8, temperature=0.7, seed=11, logprobs=2)
    reused_before = worker.engine.reused_tokens

    again = await run(worker, prompt, max_tokens=8, temperature=0.7, seed=11, logprobs=2)

    assert worker.engine.reused_tokens - reused_before == n_prompt
    assert again.text == fresh.text
    assert [(e.token, e.logprob, e.top) for e in again.logprobs] == [(e.token, e.logprob, e.top) for e in fresh.logprobs]


async def test_a_prompt_another_request_is_answering_is_restored_from_the_prompt_cache(worker):
    prompt = "A prompt that another request is still answering, word for word:"
    n_prompt = len(worker.generator.text_prompt(prompt))
    fresh = await run(worker, prompt, max_tokens=8, temperature=0)
    endless = start(worker, prompt, max_tokens=300, temperature=0, logit_bias={0: -100, 2: -100})
    await wait_for(lambda: any(seq.count for seq in worker.engine.active))
    restored_before, reused_before = worker.engine.restored_prompts, worker.engine.reused_tokens

    again = await run(worker, prompt, max_tokens=8, temperature=0)

    endless.cancel()
    await collect(endless)
    assert worker.engine.restored_prompts - restored_before == 1
    assert worker.engine.reused_tokens - reused_before == n_prompt
    assert again.text == fresh.text


async def test_stop_string_spanning_tokens_is_cut_and_never_emitted(worker):
    free = await run(worker, "1, 2, 3, 4,", max_tokens=16, temperature=0)
    stop = " 6, 7"  # spans several tokens of the free answer
    assert stop in free.text

    cut = await run(worker, "1, 2, 3, 4,", max_tokens=16, temperature=0, stop=[stop])

    assert cut.text == free.text[: free.text.index(stop)]
    assert cut.finished.reason == "stop"


async def test_max_tokens_ends_with_length(worker):
    out = await run(worker, "Once upon a time", max_tokens=5, temperature=0)

    assert out.finished == Finished(reason="length", completion_tokens=5)
    assert out.text


async def test_cancel_stops_within_a_step_and_frees_the_slot(worker):
    job = start(worker, "Once upon a time", max_tokens=400, logit_bias={0: -100, 2: -100})
    deltas = 0
    while deltas < 3:
        event = await job.events.get()
        deltas += isinstance(event[1], Delta)

    job.cancel()
    rest = [e async for e in _until_done(job)]

    finished = [item for _, item in rest if isinstance(item, Finished)]
    assert finished[0].reason == "cancelled"
    assert finished[0].completion_tokens <= 5
    await wait_for(lambda: worker.inflight == 0)


async def test_a_cancelled_request_lets_a_queued_one_start(worker):
    long = [start(worker, p, max_tokens=400, logit_bias={0: -100, 2: -100}) for p in PROMPTS]
    await wait_for(lambda: worker.inflight == SLOTS)
    queued = start(worker, "Water boils at", max_tokens=4, temperature=0)
    await asyncio.sleep(0.3)
    assert worker.queued == 1

    long[0].cancel()
    out = await asyncio.wait_for(collect(queued), timeout=30)

    assert out[0].finished.reason == "length"
    for job in long[1:]:
        job.cancel()
    await wait_for(lambda: worker.inflight == 0)


async def test_a_full_queue_is_refused(worker):
    busy = [start(worker, p, max_tokens=400, logit_bias={0: -100, 2: -100}) for p in PROMPTS]
    await wait_for(lambda: worker.inflight == SLOTS)
    waiting = [start(worker, "Hello", max_tokens=4) for _ in range(worker.queue_depth)]

    with pytest.raises(QueueFull):
        start(worker, "Hello", max_tokens=4)

    for job in busy + waiting:
        job.cancel()
    await wait_for(lambda: worker.inflight == 0 and worker.queued == 0)


async def test_json_schema_response_format_yields_json_of_that_shape(worker):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}}, "required": ["name", "age"]}
    params = sampling_params({"response_format": {"type": "json_schema", "json_schema": {"name": "cat", "schema": schema}}})
    params.temperature, params.max_tokens = 0, 60
    prompt = worker.generator.chat_prompt([{"role": "user", "content": "Describe a cat as JSON with name and age."}])

    out = (await collect(worker.generate([prompt], params, loop=asyncio.get_running_loop())))[0]

    assert out.finished.reason == "stop"
    cat = json.loads(out.text)
    assert isinstance(cat["name"], str) and isinstance(cat["age"], int)


async def test_logprobs_describe_each_generated_token(worker):
    out = await run(worker, "The capital of France is", max_tokens=6, temperature=0, logprobs=3)

    assert len(out.logprobs) == 6
    assert "".join(e.token for e in out.logprobs) == out.text
    for entry in out.logprobs:
        assert entry.logprob <= 0
        assert len(entry.top) == 3
        assert entry.top[0][0] == entry.token  # greedy picks the most likely token
        assert [lp for _, _, lp in entry.top] == sorted((lp for _, _, lp in entry.top), reverse=True)


async def test_n_choices_run_side_by_side_with_distinct_seeded_samples(worker):
    tokens = worker.generator.text_prompt("My favourite animal is")
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=7)

    first = await collect(worker.generate([tokens], params, loop=asyncio.get_running_loop(), n=3))
    second = await collect(worker.generate([tokens], params, loop=asyncio.get_running_loop(), n=3))

    assert sorted(first) == [0, 1, 2]
    assert [first[i].text for i in range(3)] == [second[i].text for i in range(3)]
    assert len({first[i].text for i in range(3)}) > 1


async def test_the_event_loop_stays_responsive_while_the_engine_decodes(worker):
    jobs = [start(worker, p, max_tokens=48, temperature=0) for p in PROMPTS]
    lags = []
    while any(job.remaining for job in jobs):
        before = time.monotonic()
        await asyncio.sleep(0.005)
        lags.append(time.monotonic() - before)

    await asyncio.gather(*(collect(job) for job in jobs))
    assert max(lags) < 0.1


async def test_prompt_over_context_is_refused(worker):
    with pytest.raises(EngineError) as err:
        await run(worker, "word " * 600)

    assert err.value.code == "context_length_exceeded"
    assert err.value.status == 400


async def _until_done(job: Job):
    while (event := await job.events.get()) is not DONE:
        yield event


def test_default_slots_follow_cores_and_fit_the_kv_cache_in_memory(worker):
    assert default_slots(worker.model, 2048) == min(16, 8 * (os.cpu_count() or 1))
    assert default_slots(worker.model, 1 << 20) == 1  # a million-token context: one slot fits


async def test_a_grammar_request_leaves_the_rest_of_its_batch_unchanged(worker):
    alone = [(await run(worker, p, max_tokens=16, temperature=0)).text for p in PROMPTS[:4]]
    prompt = worker.generator.chat_prompt([{"role": "user", "content": "Describe a dog as JSON."}])
    params = sampling_params({"response_format": {"type": "json_object"}, "max_tokens": 16, "temperature": 0})

    json_job = worker.generate([prompt], params, loop=asyncio.get_running_loop())
    together = await asyncio.gather(*(run(worker, p, max_tokens=16, temperature=0) for p in PROMPTS[:4]))
    constrained = (await collect(json_job))[0]

    assert [o.text for o in together] == alone
    assert constrained.text.lstrip().startswith("{")


async def test_another_conversation_in_between_keeps_the_first_ones_cached_prefix(worker):
    history = "A long conversation about the rivers of Europe and their bridges. " * 10
    await run(worker, history + "First question:", max_tokens=4, temperature=0)
    await run(worker, "An unrelated short request", max_tokens=4, temperature=0)
    reused_before = worker.engine.reused_tokens

    await run(worker, history + "Second question:", max_tokens=4, temperature=0)

    assert worker.engine.reused_tokens - reused_before >= 64


async def test_a_request_that_fails_to_be_placed_fails_alone_and_the_engine_keeps_serving(worker, monkeypatch):
    expected = (await run(worker, PROMPTS[0], max_tokens=8, temperature=0)).text
    engine = worker.engine
    real_pick = engine._pick_slot
    calls = {"n": 0}

    def pick_once_broken(seq, free):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated llama.cpp failure while placing a request")
        return real_pick(seq, free)

    monkeypatch.setattr(engine, "_pick_slot", pick_once_broken)

    with pytest.raises(EngineError) as failed:
        await asyncio.wait_for(run(worker, PROMPTS[1], max_tokens=8, temperature=0), timeout=30)
    after = await asyncio.wait_for(run(worker, PROMPTS[0], max_tokens=8, temperature=0), timeout=30)

    assert failed.value.status == 500 and failed.value.code == "engine_error"
    assert after.text == expected
    assert engine._thread.is_alive()
