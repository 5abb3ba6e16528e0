"""bench fleet: throughput with 1, 2, 3 stub nodes behind one gateway, and dispatch decision time.

Throughput: stub nodes with a fixed per-token delay and a fixed number of slots, so each node
saturates at slots / (16 x delay) requests per second and this 2-core machine is not the limit.
Model `fleet-N` is served by nodes 1..N, so one gateway measures every N in one run, interleaved.
Dispatch: the real `fleet.dispatch.pick_route` on a routing table of simulated nodes, per policy.
"""

import argparse
import asyncio
import random
import statistics
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from tqdm import tqdm

from bench.common import NODE_TOKEN, Gateway, add_stub_arguments, cpu_seconds, finish, gateway, header, percentile, setup_django, verdict

if TYPE_CHECKING:  # importing Django models needs django.setup(), which only the dispatch part does
    from fleet.selectors import ModelView

SCALING_TARGET = 0.95  # N nodes give at least 0.95 x N times one node's req/s
DISPATCH_P99_TARGET_MS = 0.2
DISPATCH_TARGET_SIZE = 256
CHUNKS = 16  # what a stub node streams per request
SETTLE_SECONDS = 3.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_stub_arguments(parser, nodes=3, slots=4, token_delay=0.02)  # measures 1..NODES
    parser.add_argument("--requests-per-client", type=int, default=8, help="back-to-back requests per client per round")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (medians reported)")
    parser.add_argument("--sizes", default="16,64,256", help="simulated fleet sizes for dispatch timing")
    parser.add_argument("--calls", type=int, default=5000, help="pick_route calls per (rep, size, policy)")
    parser.add_argument("--only", choices=("all", "throughput", "dispatch"), default="all")


# -- throughput -----------------------------------------------------------------------------


@dataclass
class Round:
    latencies: list[float] = field(default_factory=list)
    per_node: Counter[str] = field(default_factory=Counter)
    failures: int = 0
    wall: float = 0.0
    gateway_cpu: float = 0.0
    to_full_node: int = 0  # requests a node had to queue because all its slots were busy

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0


async def waited_at_stubs(http: aiohttp.ClientSession, stubs: Sequence[str]) -> int:
    total = 0
    for address in stubs:
        async with http.get(f"{address}/internal/stats") as r:
            total += int((await r.json())["waited"])
    return total


async def load_round(
    gw: Gateway,
    model: str,
    *,
    clients: int,
    per_client: int,
    stubs: Sequence[str] = (),
    direct: str = "",
    progress: tqdm | None = None,
) -> Round:
    """`clients` streaming clients, each sending `per_client` chat requests back to back (to the stub at `direct`, if given)."""
    result = Round()
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": CHUNKS, "stream": True}
    url = f"{direct}/internal/v1/chat/completions" if direct else f"{gw.url}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {NODE_TOKEN if direct else gw.key}"}
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:

        async def client() -> None:
            for _ in range(per_client):
                started = time.perf_counter()
                tail = b""
                try:
                    async with http.post(url, json=body) as r:
                        async for data in r.content.iter_any():
                            tail = (tail + data)[-64:]
                        ok = r.status == 200 and tail.endswith(b"data: [DONE]\n\n") and b'"error"' not in tail
                        node = r.headers.get("X-Node", "direct")
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                if ok:
                    result.latencies.append(time.perf_counter() - started)
                    result.per_node[node] += 1
                else:
                    result.failures += 1
                if progress is not None:
                    progress.update(1)

        waited_before = await waited_at_stubs(http, stubs)
        cpu_before = cpu_seconds(gw.pid)
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        result.wall = time.perf_counter() - started
        result.gateway_cpu = cpu_seconds(gw.pid) - cpu_before
        result.to_full_node = await waited_at_stubs(http, stubs) - waited_before
    return result


def start_fleet(gw: Gateway, *, nodes: int, slots: int, token_delay: float) -> list[str]:
    """Node i serves fleet-i..fleet-NODES, so model fleet-N is routed over exactly nodes 1..N; returns their addresses."""
    for n in range(1, nodes + 1):
        gw.alias_bundled_model(f"fleet-{n}")
    return [
        gw.start_stub(f"fleet-node-{i}", models=[f"fleet-{n}" for n in range(i, nodes + 1)], slots=slots, token_delay=token_delay)
        for i in range(1, nodes + 1)
    ]


def wait_spread(gw: Gateway, *, nodes: int, slots: int, timeout: float = 90) -> None:
    """Warm every model until its requests reach all of its nodes (registered, ready, in the routing table)."""
    gw.wait_servable()
    for n in range(1, nodes + 1):
        deadline = time.monotonic() + timeout
        while True:
            warm = asyncio.run(load_round(gw, f"fleet-{n}", clients=slots * n, per_client=1))
            if len(warm.per_node) == n and not warm.failures:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"fleet-{n} reached {sorted(warm.per_node)} after {timeout:.0f}s, expected {n} nodes")
            time.sleep(1.0)


@dataclass
class Throughput:
    nodes: int
    clients: int
    rps: float
    p50_ms: float
    p99_ms: float
    gateway_cores: float  # gateway CPU seconds per wall second
    spread: str  # share of requests per node
    to_full_node: float  # share of requests sent to a node with no free slot
    failures: int


def summarize_throughput(nodes: int, clients: int, rounds: list[Round]) -> Throughput:
    per_node: Counter[str] = Counter()
    for r in rounds:
        per_node.update(r.per_node)
    total = sum(per_node.values()) or 1
    return Throughput(
        nodes=nodes,
        clients=clients,
        rps=statistics.median(r.rps for r in rounds),
        p50_ms=statistics.median(percentile(r.latencies, 0.5) for r in rounds) * 1000,
        p99_ms=statistics.median(percentile(r.latencies, 0.99) for r in rounds) * 1000,
        gateway_cores=statistics.median(r.gateway_cpu / r.wall for r in rounds),
        spread=" / ".join(f"{100 * count / total:.0f}%" for _, count in sorted(per_node.items())),
        to_full_node=sum(r.to_full_node for r in rounds) / total,
        failures=sum(r.failures for r in rounds),
    )


def throughput_table(results: list[Throughput]) -> str:
    """One row per node count; nodes == 0 is the baseline straight to one stub, without the gateway."""
    one = next((t.rps for t in results if t.nodes == 1), 0.0)
    lines = [
        "| nodes | clients | req/s | vs 1 node | target | p50 (ms) | p99 (ms) | gateway CPU (cores) | requests per node "
        "| sent to a full node | failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in results:
        ratio = t.rps / one if one else float("nan")
        nodes, target = ("1, no gateway", "-") if t.nodes == 0 else (str(t.nodes), f">= {SCALING_TARGET * t.nodes:.2f}x")
        lines.append(
            f"| {nodes} | {t.clients} | {t.rps:.1f} | {ratio:.2f}x | {target} | {t.p50_ms:.0f} "
            f"| {t.p99_ms:.0f} | {t.gateway_cores:.2f} | {t.spread} | {100 * t.to_full_node:.1f}% | {t.failures} |"
        )
    return "\n".join(lines)


def throughput_misses(results: list[Throughput]) -> list[str]:
    """N nodes below 0.95 x N times one node's req/s, and any failed request, are misses."""
    one = next((t.rps for t in results if t.nodes == 1), 0.0)
    missed = [f"{t.nodes} node(s): {t.failures} failed requests" for t in results if t.failures]
    for t in results:
        if t.nodes > 1 and t.rps < SCALING_TARGET * t.nodes * one:
            missed.append(f"{t.nodes} nodes: {t.rps / one if one else 0:.2f}x one node < {SCALING_TARGET * t.nodes:.2f}x")
    return missed


def measure_throughput(args: argparse.Namespace) -> tuple[list[Throughput], float]:
    """Each node count's figures (0: one stub without the gateway) and the idle gateway's CPU in cores."""
    print(f"==> Gateway + {args.nodes} stub nodes ({args.slots} slots, {args.token_delay * 1000:.0f} ms x {CHUNKS} chunks)")
    rounds: dict[int, list[Round]] = {}
    idle: list[float] = []
    levels = list(range(0, args.nodes + 1))
    with gateway(redis_db=11) as gw:
        stubs = start_fleet(gw, nodes=args.nodes, slots=args.slots, token_delay=args.token_delay)
        wait_spread(gw, nodes=args.nodes, slots=args.slots)
        time.sleep(SETTLE_SECONDS)
        total = args.reps * sum(args.slots * max(n, 1) * args.requests_per_client for n in levels)
        with tqdm(total=total, unit="req", desc="bench fleet: throughput") as progress:
            for rep in range(args.reps):
                # Alternate the order, so drift on a noisy machine hits every N alike.
                for n in levels if rep % 2 == 0 else levels[::-1]:
                    progress.set_postfix_str(f"rep {rep + 1} nodes={n or 'direct'}")
                    outcome = asyncio.run(
                        load_round(
                            gw, f"fleet-{max(n, 1)}", clients=args.slots * max(n, 1), per_client=args.requests_per_client,
                            stubs=stubs, direct="" if n else stubs[0], progress=progress,
                        )
                    )
                    rounds.setdefault(n, []).append(outcome)
                    # Let the stubs heartbeat their idle state into the routing table before the next round, so no
                    # round starts with the last one's in-flight counts (heartbeat every 1 s, table refresh every 1 s).
                    cpu_before = cpu_seconds(gw.pid)
                    time.sleep(SETTLE_SECONDS)
                    idle.append((cpu_seconds(gw.pid) - cpu_before) / SETTLE_SECONDS)
    return [summarize_throughput(n, args.slots * max(n, 1), rounds[n]) for n in levels], statistics.median(idle)


# -- dispatch decision time -----------------------------------------------------------------


def simulated_view(size: int, rng: random.Random) -> "ModelView":
    """A model routed over `size` ready nodes with varied load, TTFT, errors and telemetry age."""
    from fleet.selectors import ModelView, Route

    routes = tuple(
        Route(
            node=f"sim-{i:03d}",
            address=f"http://sim-{i:03d}.invalid:9101",  # never contacted
            inflight=rng.randint(0, 8),
            slots=8,
            queued=rng.choice((0, 0, 0, 1, 2)),
            ttft_p95_ms=rng.uniform(50, 800),
            error_rate=rng.choice((0.0, 0.0, 0.0, 0.01, 0.05)),
            age=rng.uniform(0, 3),
            ready_since=time.time() - rng.uniform(0, 3600),
        )
        for i in range(size)
    )
    return ModelView(name=f"sim-{size}", aliases=(), created=0, n_ctx=2048, routes=routes)


def time_pick_route(size: int, policy: str, calls: int, rng: random.Random) -> list[float]:
    """Milliseconds per `pick_route` call, with this process's in-flight counts moving as a gateway's do."""
    from django.test import override_settings

    from fleet import dispatch

    view = simulated_view(size, rng)
    inflight: deque[str] = deque()
    keep = size * 4  # about half of the simulated slots busy through this gateway
    samples = []
    with override_settings(AXS_DISPATCH_POLICY=policy, AXS_DISPATCH_POLICY_BY_MODEL={}):
        for i in range(calls):
            affinity = f"7:conversation {i % 97}" if policy == "model_affinity" else ""
            started = time.perf_counter_ns()
            route = dispatch.pick_route(view, affinity_key=affinity)
            samples.append((time.perf_counter_ns() - started) / 1e6)
            dispatch.started(route.node)
            inflight.append(route.node)
            if len(inflight) > keep:
                dispatch.finished(inflight.popleft(), ok=True)
        while inflight:
            dispatch.finished(inflight.popleft(), ok=True)
    return samples


def measure_dispatch(args: argparse.Namespace) -> dict[tuple[int, str], tuple[float, float]]:
    """Median over reps of each (size, policy)'s p50 and p99, in ms."""
    setup_django()
    from fleet.policies import POLICIES

    sizes = [int(s) for s in args.sizes.split(",")]
    rng = random.Random(8)
    per_rep: dict[tuple[int, str], list[tuple[float, float]]] = {}
    jobs = [(rep, size, policy) for rep in range(args.reps) for size in sizes for policy in POLICIES]
    for rep, size, policy in tqdm(jobs, desc="bench fleet: dispatch", unit="table"):
        samples = time_pick_route(size, policy, args.calls, rng)
        per_rep.setdefault((size, policy), []).append((percentile(samples, 0.5), percentile(samples, 0.99)))
    return {
        key: (statistics.median(p50 for p50, _ in reps), statistics.median(p99 for _, p99 in reps)) for key, reps in per_rep.items()
    }


def dispatch_table(results: dict[tuple[int, str], tuple[float, float]]) -> str:
    lines = ["| simulated nodes | policy | p50 (ms) | p99 (ms) |", "|---|---|---|---|"]
    for (size, policy), (p50, p99) in sorted(results.items()):
        lines.append(f"| {size} | {policy} | {p50:.4f} | {p99:.4f} |")
    return "\n".join(lines)


def dispatch_misses(results: dict[tuple[int, str], tuple[float, float]]) -> list[str]:
    """p99 above 0.2 ms at 256 simulated nodes (or more) is a miss."""
    return [
        f"{policy} at {size} nodes: p99 {p99:.3f} ms > {DISPATCH_P99_TARGET_MS} ms"
        for (size, policy), (_, p99) in sorted(results.items())
        if size >= DISPATCH_TARGET_SIZE and p99 > DISPATCH_P99_TARGET_MS
    ]


# -- run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace, argv: list[str]) -> int:
    sections, missed = [], []
    if args.only in ("all", "dispatch"):
        dispatch = measure_dispatch(args)
        missed += dispatch_misses(dispatch)
        sections.append(
            f"Dispatch decision time (`fleet.dispatch.pick_route`, {args.calls} calls per table and policy, "
            f"medians over {args.reps} reps):\n\n{dispatch_table(dispatch)}"
        )
    if args.only in ("all", "throughput"):
        throughput, idle = measure_throughput(args)
        missed += throughput_misses(throughput)
        sections.append(
            f"Throughput through one gateway (streaming chat, {CHUNKS} chunks x {args.token_delay * 1000:.0f} ms per request, "
            f"{args.slots} slots per node, clients = slots x nodes, {args.requests_per_client} requests per client, "
            f"medians over {args.reps} interleaved reps; the idle gateway, heartbeats and routing refreshes only, "
            f"uses {idle:.2f} cores):\n\n{throughput_table(throughput)}"
        )
    report = (
        header(
            "fleet", argv,
            "setup: 1 gateway process (`rungateway`) + stub nodes (`bench/stub_node.py`) registered through it + this load "
            "generator on the same machine; dispatch timed in this process on simulated routing tables",
        )
        + "\n" + "\n\n".join(sections)
        + f"\n\nTargets (N nodes >= 0.95 x N times one node's req/s; dispatch p99 <= 0.2 ms at 256 nodes): {verdict(missed)}\n"
    )
    return finish(report, missed, record=not args.no_record)
