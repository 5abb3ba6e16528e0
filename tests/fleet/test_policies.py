"""Each dispatch policy on tables of node states: deterministic, no processes."""

from collections import Counter

import pytest

from fleet.policies import PolicyState, choose, score
from fleet.selectors import Route


def r(node: str, **kw) -> Route:
    return Route(node=node, address=f"http://{node}", **kw)


def picks(policy: str, routes: list[Route], n: int, **kw) -> Counter[str]:
    state = PolicyState()
    return Counter(choose(policy, routes, state, **kw).node for _ in range(n))


def test_least_inflight_picks_the_least_loaded_per_slot():
    routes = [r("a", inflight=4, slots=4), r("b", inflight=2, slots=8), r("c", inflight=3, slots=2)]

    assert picks("least_inflight", routes, 5) == Counter({"b": 5})


def test_least_inflight_takes_turns_between_equals():
    routes = [r("a"), r("b"), r("c")]

    assert picks("least_inflight", routes, 9) == Counter({"a": 3, "b": 3, "c": 3})


def test_least_inflight_counts_queued_requests_as_load():
    routes = [r("a", inflight=1, queued=5, slots=2), r("b", inflight=2, slots=2)]

    assert picks("least_inflight", routes, 3) == Counter({"b": 3})


def test_weighted_round_robin_shares_by_free_slots():
    routes = [r("big", slots=8, inflight=2), r("small", slots=4, inflight=1), r("full", slots=2, inflight=2)]

    counts = picks("weighted_round_robin", routes, 100)

    # weights 6 : 3 : 1 (a full node keeps weight 1 so it is not starved of probes)
    assert counts == Counter({"big": 60, "small": 30, "full": 10})


def test_weighted_round_robin_interleaves_rather_than_bursts():
    state = PolicyState()
    routes = [r("a", slots=2), r("b", slots=1)]

    order = [choose("weighted_round_robin", routes, state).node for _ in range(6)]

    assert order == ["a", "b", "a", "a", "b", "a"]


def test_model_affinity_sends_a_conversation_to_the_same_node():
    routes = [r("a", slots=4), r("b", slots=4), r("c", slots=4)]

    first = picks("model_affinity", routes, 10, affinity_key="key1:Hello, I am planning a trip")
    spread = {choose("model_affinity", routes, PolicyState(), affinity_key=f"k:{i}").node for i in range(30)}

    assert len(first) == 1
    assert spread == {"a", "b", "c"}


def test_model_affinity_moves_off_a_full_favourite():
    key = "key1:conversation"
    routes = [r("a", slots=4), r("b", slots=4)]
    favourite = choose("model_affinity", routes, PolicyState(), affinity_key=key).node
    full = [r(n, slots=4, inflight=4 if n == favourite else 0) for n in ("a", "b")]

    assert choose("model_affinity", full, PolicyState(), affinity_key=key).node != favourite


def test_model_affinity_keeps_keys_in_place_when_a_node_leaves():
    three = [r("a", slots=4), r("b", slots=4), r("c", slots=4)]
    two = [route for route in three if route.node != "c"]
    keys = [f"k:{i}" for i in range(60)]

    before = {k: choose("model_affinity", three, PolicyState(), affinity_key=k).node for k in keys}
    after = {k: choose("model_affinity", two, PolicyState(), affinity_key=k).node for k in keys}

    assert all(after[k] == before[k] for k in keys if before[k] != "c")


@pytest.mark.parametrize(
    ("worse", "why"),
    [
        (dict(inflight=4, slots=4), "load"),
        (dict(ttft_p95_ms=2500.0), "slow first token"),
        (dict(error_rate=0.3), "errors"),
        (dict(age=5.0), "stale telemetry"),
    ],
)
def test_scored_avoids_the_node_that_is_worse_on_one_signal(worse, why):
    routes = [r("good", slots=4), r("bad", **{"slots": 4, **worse})]

    assert picks("scored", routes, 5, ttl=6.0) == Counter({"good": 5}), why


def test_scored_weighs_signals_together():
    busy_fast = r("busy-fast", inflight=2, slots=4, ttft_p95_ms=100)
    idle_slow = r("idle-slow", inflight=0, slots=4, ttft_p95_ms=3000)

    assert score(busy_fast, ttl=6) < score(idle_slow, ttl=6)
    assert picks("scored", [busy_fast, idle_slow], 3, ttl=6.0) == Counter({"busy-fast": 3})
