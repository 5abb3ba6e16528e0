"""The node engine on the real bundled model, in-process (no HTTP)."""

import threading

import pytest

from inference.node.engine import Delta, EngineError, Finished, ModelSpec, ModelWorker, SamplingParams, _stop_holdback
from models_registry.services import bundled_model_path


@pytest.fixture(scope="module")
def generator():
    worker = ModelWorker(ModelSpec(name="t", path=bundled_model_path(), n_ctx=512, embeddings=False), queue_depth=2)
    worker.load()
    yield worker.generator
    worker.stop()


def run(generator, prompt: str, cancelled=lambda: False, **params) -> tuple[str, Finished]:
    events = list(generator.generate(generator.text_prompt(prompt), SamplingParams(**params), cancelled))
    return "".join(e.text for e in events if isinstance(e, Delta)), events[-1]


@pytest.mark.parametrize(
    ("text", "stops", "held"),
    [("hello wor", ["world"], 3), ("hello", ["world"], 0), ("abc<|", ["<|end|>"], 2), ("ab", ["b", "bc"], 1)],
)
def test_stop_holdback_keeps_only_a_possible_stop_prefix(text, stops, held):
    assert _stop_holdback(text, stops) == held


def test_stop_string_spanning_tokens_is_cut_and_never_emitted(generator):
    free, _ = run(generator, "1, 2, 3, 4,", max_tokens=16, temperature=0)
    stop = " 6, 7"  # spans several tokens of the free answer
    assert stop in free

    text, finished = run(generator, "1, 2, 3, 4,", max_tokens=16, temperature=0, stop=[stop])

    assert text == free[: free.index(stop)]
    assert finished.reason == "stop"


def test_max_tokens_ends_with_length(generator):
    text, finished = run(generator, "Once upon a time", max_tokens=5, temperature=0)

    assert finished == Finished(reason="length", completion_tokens=5)
    assert text


def test_cancel_stops_within_a_step(generator):
    flag = threading.Event()
    produced = []
    prompt = generator.text_prompt("Once upon a time")
    for event in generator.generate(prompt, SamplingParams(max_tokens=400, logit_bias={0: -100, 2: -100}), flag.is_set):
        produced.append(event)
        if len(produced) == 3:
            flag.set()

    assert produced[-1] == Finished(reason="cancelled", completion_tokens=3)


def test_json_object_grammar_yields_json(generator):
    import json

    from llama_cpp.llama_grammar import JSON_GBNF

    prompt = generator.chat_prompt([{"role": "user", "content": "Give me a JSON object describing a cat."}])
    events = list(generator.generate(prompt, SamplingParams(max_tokens=120, temperature=0, grammar=JSON_GBNF), lambda: False))
    text = "".join(e.text for e in events if isinstance(e, Delta))

    if events[-1].reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.lstrip().startswith("{")


def test_prompt_over_context_is_refused(generator):
    with pytest.raises(EngineError) as err:
        run(generator, "word " * 600)

    assert err.value.code == "context_length_exceeded"
    assert err.value.status == 400
