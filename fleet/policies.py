"""Dispatch policies: given the routes that passed the hard filters, choose one.

Pure functions of their inputs (plus the small per-model state a round robin needs), so
they are tested on tables of node states without processes.
"""

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .selectors import Route

POLICIES = ("least_inflight", "weighted_round_robin", "model_affinity", "scored")


@dataclass(slots=True)
class PolicyState:
    """Per-model memory of a policy: smooth weighted round-robin weights and a tie-break counter."""

    # Smooth weighted round robin's running weight per route, aligned with the routes sequence it
    # belongs to; carried over by node name when the routing table is rebuilt.
    current: list[float] = field(default_factory=list)
    current_of: Sequence[Route] = ()
    turn: int = 0
    # The scored policy's load-independent part per route, for the routes tuple it was computed on
    # (the routing table's, rebuilt every refresh).
    penalties: list[float] = field(default_factory=list)
    penalties_of: object = None


# This gateway's own in-flight count per node, exact at every moment; a route's `inflight` is then
# the rest of the node's load as of its last heartbeat (other gateways' requests: dispatch.py
# subtracts this gateway's share when it builds the table). Passed in rather than copied into
# routes, because a pick visits every route and must stay well under a millisecond at hundreds
# of nodes.
Local = Mapping[str, int]
_NONE: Local = {}


def _inflight(route: Route, local: Local) -> int:
    return local.get(route.node, 0) + route.inflight


def _load(route: Route, local: Local = _NONE) -> float:
    return (_inflight(route, local) + route.queued) / (route.slots if route.slots > 0 else 1)


def least_inflight(routes: Sequence[Route], state: PolicyState, *, local: Local = _NONE) -> Route:
    """Fewest requests in flight per slot; equals take turns."""
    best: list[Route] = []
    least = math.inf
    mine = local.get
    for r in routes:  # inline: this loop runs for every node on every request
        load = (mine(r.node, 0) + r.inflight + r.queued) / (r.slots or 1)
        if load < least:
            least, best = load, [r]
        elif load == least:
            best.append(r)
    state.turn += 1
    return best[state.turn % len(best)]


def weighted_round_robin(routes: Sequence[Route], state: PolicyState, *, local: Local = _NONE) -> Route:
    """Smooth weighted round robin, each node weighted by its free slots (at least 1)."""
    if state.current_of is not routes:
        carried = dict(zip((r.node for r in state.current_of), state.current, strict=True))
        state.current = [carried.get(r.node, 0.0) for r in routes]  # nodes that left are forgotten
        state.current_of = routes
    current = state.current
    total = 0.0
    chosen = -1
    top, top_node = -math.inf, ""
    mine = local.get
    for i, r in enumerate(routes):  # inline: this loop runs for every node on every request
        free = r.slots - mine(r.node, 0) - r.inflight
        weight = free if free > 1 else 1
        value = current[i] + weight
        current[i] = value
        total += weight
        if value > top or (value == top and r.node > top_node):
            top, top_node, chosen = value, r.node, i
    current[chosen] -= total
    return routes[chosen]


def model_affinity(routes: Sequence[Route], state: PolicyState, *, affinity_key: str, local: Local = _NONE) -> Route:
    """The same conversation goes to the same node while it has a free slot (its KV prefix is warm there).

    Rendezvous hashing keeps most keys in place when a node joins or leaves; a busy favourite
    falls back to least_inflight. The rank is a CRC-32 of node and key: the same in every gateway
    process (unlike hash()), and cheap enough to compute for every node on every request.
    """
    mine = local.get
    if not affinity_key:
        free = [r for r in routes if r.slots > r.inflight + mine(r.node, 0)]
        return least_inflight(free or routes, state, local=local)
    key = affinity_key.encode()
    chosen: Route | None = None
    top = -1
    for r in routes:  # inline: this loop runs for every node on every request
        if r.slots <= r.inflight + mine(r.node, 0):
            continue
        seed = _SEEDS.get(r.node)
        if seed is None:
            seed = _SEEDS[r.node] = zlib.crc32(r.node.encode() + b"\0")
        rank = zlib.crc32(key, seed)
        if rank > top or (rank == top and chosen is not None and r.node > chosen.node):
            top, chosen = rank, r
    if chosen is None:  # every node is full: the least loaded one queues it
        return least_inflight(routes, state, local=local)
    return chosen


_SEEDS: dict[str, int] = {}


# Weights of the scored policy: one queued request per slot costs as much as 1 s of TTFT p95,
# a 10 % error rate or telemetry one full TTL old.
SCORE_WEIGHTS = {"load": 1.0, "ttft_s": 1.0, "error_rate": 10.0, "staleness": 1.0}


def score(route: Route, *, ttl: float, local: Local = _NONE) -> float:
    """Lower is better: load per slot, TTFT p95, error rate and how stale the figures are."""
    return (
        SCORE_WEIGHTS["load"] * _load(route, local)
        + SCORE_WEIGHTS["ttft_s"] * route.ttft_p95_ms / 1000.0
        + SCORE_WEIGHTS["error_rate"] * route.error_rate
        + SCORE_WEIGHTS["staleness"] * route.age / max(ttl, 0.001)
    )


def scored(routes: Sequence[Route], state: PolicyState, *, ttl: float, local: Local = _NONE) -> Route:
    """The lowest `score`; equals take turns."""
    if state.penalties_of is not routes:
        state.penalties = [score(r, ttl=ttl) - SCORE_WEIGHTS["load"] * _load(r) for r in routes]
        state.penalties_of = routes
    w_load = SCORE_WEIGHTS["load"]
    tied: list[Route] = []
    best = math.inf
    mine = local.get
    for r, penalty in zip(routes, state.penalties, strict=True):  # inline: runs for every node on every request
        value = w_load * (mine(r.node, 0) + r.inflight + r.queued) / (r.slots or 1) + penalty
        if value < best:
            best, tied = value, [r]
        elif value == best:
            tied.append(r)
    state.turn += 1
    return tied[state.turn % len(tied)]


def choose(
    policy: str, routes: Sequence[Route], state: PolicyState, *, affinity_key: str = "", ttl: float = 6.0, local: Local = _NONE
) -> Route:
    if policy == "weighted_round_robin":
        return weighted_round_robin(routes, state, local=local)
    if policy == "model_affinity":
        return model_affinity(routes, state, affinity_key=affinity_key, local=local)
    if policy == "scored":
        return scored(routes, state, ttl=ttl, local=local)
    return least_inflight(routes, state, local=local)
