"""The official `openai` client, unchanged, against the real all-in-one on the bundled model."""

import base64

import numpy as np
import pytest

CHAT = [{"role": "user", "content": "Write one sentence about the sea."}]


def test_chat_completion_returns_assistant_text_and_usage(openai_client):
    completion = openai_client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=16, temperature=0)

    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in {"stop", "length"}
    assert completion.model == "smollm2"
    assert completion.usage.prompt_tokens > 0
    assert 0 < completion.usage.completion_tokens <= 16
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_chat_stream_arrives_in_several_chunks_and_ends_cleanly(openai_client):
    stream = openai_client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=24, temperature=0, stream=True)

    chunks = list(stream)

    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(contents) >= 3
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}
    assert len({c.id for c in chunks}) == 1


def test_stream_matches_non_stream_at_temperature_zero(openai_client):
    whole = openai_client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=20, temperature=0)
    stream = openai_client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=20, temperature=0, stream=True)

    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    assert streamed == whole.choices[0].message.content


def test_completions_stream_with_include_usage_ends_with_a_usage_chunk(openai_client):
    stream = openai_client.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )

    chunks = list(stream)

    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == 12
    assert last.usage.prompt_tokens > 0
    text = "".join(c.choices[0].text for c in chunks[:-1])
    assert len(text) > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_non_stream_has_usage_and_stops_on_stop_sequence(openai_client):
    free = openai_client.completions.create(model="smollm2", prompt="1, 2, 3, 4,", max_tokens=20, temperature=0)
    text = free.choices[0].text
    assert " 6" in text, text  # the model counts on; the stop below must cut it there

    cut = openai_client.completions.create(model="smollm2", prompt="1, 2, 3, 4,", max_tokens=20, temperature=0, stop=[" 6"])

    assert cut.choices[0].text == text[: text.index(" 6")]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < free.usage.completion_tokens


def test_seeded_sampling_is_reproducible(openai_client):
    def run(seed: int) -> str:
        out = openai_client.chat.completions.create(
            model="smollm2", messages=CHAT, max_tokens=24, temperature=1.0, top_p=0.95, seed=seed
        )
        return out.choices[0].message.content

    first, again = run(1234), run(1234)

    assert first == again
    assert any(run(seed) != first for seed in (1, 2, 3))


def test_alias_default_serves_the_bundled_model(openai_client):
    completion = openai_client.chat.completions.create(model="default", messages=CHAT, max_tokens=4)

    assert completion.model == "smollm2"


def test_max_completion_tokens_caps_the_answer(openai_client):
    completion = openai_client.chat.completions.create(
        model="smollm2", messages=CHAT, max_completion_tokens=3, temperature=0
    )

    assert completion.usage.completion_tokens == 3
    assert completion.choices[0].finish_reason == "length"


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embeddings_float_and_base64_agree_and_rank_similar_texts_closer(openai_client):
    texts = ["The cat sat on the mat.", "A cat was sitting on a rug.", "Quarterly revenue grew by eight percent."]

    as_float = openai_client.embeddings.create(model="smollm2", input=texts, encoding_format="float")
    as_default = openai_client.embeddings.create(model="smollm2", input=texts)  # the client asks for base64

    vectors = [np.array(d.embedding) for d in as_float.data]
    assert [d.index for d in as_float.data] == [0, 1, 2]
    assert all(v.shape == (576,) for v in vectors)
    assert as_float.usage.prompt_tokens > 0
    decoded = [np.array(d.embedding) for d in as_default.data]
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(vectors, decoded))
    assert _cosine(vectors[0], vectors[1]) > _cosine(vectors[0], vectors[2])


def test_embeddings_raw_base64_is_little_endian_float32(http):
    response = http.post("/v1/embeddings", json={"model": "smollm2", "input": "hello", "encoding_format": "base64"})

    raw = base64.b64decode(response.json()["data"][0]["embedding"])
    assert len(raw) == 576 * 4
    assert np.isclose(np.linalg.norm(np.frombuffer(raw, dtype="<f4")), 1.0, atol=1e-3)


def test_embeddings_accept_token_arrays(http):
    tokens = http.post("/v1/tokenize", json={"model": "smollm2", "content": "hello world"}).json()["tokens"]

    response = http.post("/v1/embeddings", json={"model": "smollm2", "input": [tokens, "hello world"]})

    assert response.status_code == 200
    a, b = (np.array(d["embedding"]) for d in response.json()["data"])
    assert _cosine(a, b) > 0.95


def test_models_list_shows_the_bundled_model_ready(openai_client):
    models = openai_client.models.list()

    ids = [m.id for m in models.data]
    assert "smollm2" in ids
    model = openai_client.models.retrieve("smollm2")
    assert model.model_extra["ready"] is True
    assert "default" in model.model_extra["aliases"]


@pytest.mark.parametrize("path", ["/v1/models/default", "/v1/models/smollm2"])
def test_model_lookup_accepts_id_and_alias(http, path):
    response = http.get(path)

    assert response.status_code == 200
    assert response.json()["id"] == "smollm2"


def test_chat_logprobs_list_each_token_with_alternatives(openai_client):
    completion = openai_client.chat.completions.create(
        model="smollm2", messages=CHAT, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )

    entries = completion.choices[0].logprobs.content
    assert "".join(e.token for e in entries) == completion.choices[0].message.content
    assert all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in entries)


def test_completion_logprobs_are_parallel_lists(openai_client):
    completion = openai_client.completions.create(model="smollm2", prompt="1, 2, 3,", max_tokens=4, temperature=0, logprobs=3)

    lp = completion.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == completion.choices[0].text
