"""Dispatch policies: given the routes that passed the hard filters, choose one.

Pure functions of their inputs (plus the small per-model state a round robin needs), so
they are tested on tables of node states without processes.
"""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from .selectors import Route

POLICIES = ("least_inflight", "weighted_round_robin", "model_affinity", "scored")


@dataclass(slots=True)
class PolicyState:
    """Per-model memory of a policy: smooth weighted round-robin weights and a tie-break counter."""

    current: dict[str, float] = field(default_factory=dict)
    turn: int = 0


def _load(route: Route) -> float:
    return (route.inflight + route.queued) / max(route.slots, 1)


def least_inflight(routes: Sequence[Route], state: PolicyState) -> Route:
    """Fewest requests in flight per slot; equals take turns."""
    least = min(_load(r) for r in routes)
    best = [r for r in routes if _load(r) == least]
    state.turn += 1
    return best[state.turn % len(best)]


def weighted_round_robin(routes: Sequence[Route], state: PolicyState) -> Route:
    """Smooth weighted round robin, each node weighted by its free slots (at least 1)."""
    names = {r.node for r in routes}
    for gone in set(state.current) - names:
        del state.current[gone]
    total = 0.0
    for r in routes:
        weight = float(max(r.free, 1))
        state.current[r.node] = state.current.get(r.node, 0.0) + weight
        total += weight
    chosen = max(routes, key=lambda r: (state.current[r.node], r.node))
    state.current[chosen.node] -= total
    return chosen


def model_affinity(routes: Sequence[Route], state: PolicyState, *, affinity_key: str) -> Route:
    """The same conversation goes to the same node while it has a free slot (its KV prefix is warm there).

    Rendezvous hashing keeps most keys in place when a node joins or leaves; a busy favourite
    falls back to least_inflight.
    """
    free = [r for r in routes if r.free > 0] or list(routes)
    if not affinity_key:
        return least_inflight(free, state)

    def rank(route: Route) -> bytes:
        return hashlib.blake2b(f"{route.node}\0{affinity_key}".encode(), digest_size=8).digest()

    return max(free, key=rank)


# Weights of the scored policy: one queued request per slot costs as much as 1 s of TTFT p95,
# a 10 % error rate or telemetry one full TTL old.
SCORE_WEIGHTS = {"load": 1.0, "ttft_s": 1.0, "error_rate": 10.0, "staleness": 1.0}


def score(route: Route, *, ttl: float) -> float:
    """Lower is better: load per slot, TTFT p95, error rate and how stale the figures are."""
    return (
        SCORE_WEIGHTS["load"] * _load(route)
        + SCORE_WEIGHTS["ttft_s"] * route.ttft_p95_ms / 1000.0
        + SCORE_WEIGHTS["error_rate"] * route.error_rate
        + SCORE_WEIGHTS["staleness"] * route.age / max(ttl, 0.001)
    )


def scored(routes: Sequence[Route], state: PolicyState, *, ttl: float) -> Route:
    best = min(score(r, ttl=ttl) for r in routes)
    tied = [r for r in routes if score(r, ttl=ttl) == best]
    state.turn += 1
    return tied[state.turn % len(tied)]


def choose(policy: str, routes: Sequence[Route], state: PolicyState, *, affinity_key: str = "", ttl: float = 6.0) -> Route:
    if policy == "weighted_round_robin":
        return weighted_round_robin(routes, state)
    if policy == "model_affinity":
        return model_affinity(routes, state, affinity_key=affinity_key)
    if policy == "scored":
        return scored(routes, state, ttl=ttl)
    return least_inflight(routes, state)
