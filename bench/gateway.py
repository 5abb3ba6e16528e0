"""bench gateway: the gateway's own cost, against a stub node that answers at once.

The same load goes straight to the stub and through the gateway (auth, admission, dispatch,
relay, logging, metrics), interleaved, at several concurrencies, streaming and not. Reports
req/s, added latency and the gateway's CPU milliseconds per request (from its own CPU time).
"""

import argparse
import asyncio
import statistics
import time

import aiohttp
from tqdm import tqdm

from bench.common import NODE_TOKEN, cpu_seconds, finish, gateway, header, percentile, rss_mb, verdict

BODY = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 16}
TARGETS = {"cpu_ms_plain": 3.0, "cpu_ms_stream": 4.0, "added_p50_ms_c1": 2.0, "rss_mb": 120.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--levels", default="1,8,32,64", help="concurrencies")
    parser.add_argument("--requests", type=int, default=300, help="requests per round")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (medians reported)")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/benchmarks.md")


async def _round(url: str, headers: dict[str, str], *, stream: bool, concurrency: int, total: int) -> tuple[list[float], float]:
    """Send `total` requests with `concurrency` workers; per-request latency (s) and wall time."""
    latencies: list[float] = []
    body = {**BODY, "stream": stream}
    left = total
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=0)) as http:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                started = time.perf_counter()
                async with http.post(url, json=body) as r:
                    if stream:
                        async for _ in r.content.iter_any():
                            pass
                    else:
                        await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{url} answered {r.status}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started


def run(args: argparse.Namespace, argv: list[str]) -> int:
    levels = [int(x) for x in args.levels.split(",")]
    print("==> Setting up a database, a key, a gateway and a stub node")
    with gateway(redis_db=10) as gw:
        stub = gw.start_stub("stub", models=["smollm2"], slots=64, token_delay=0.0)
        gw.wait_servable()
        time.sleep(1.5)
        targets = {
            "direct": (f"{stub}/internal/v1/chat/completions", {"Authorization": f"Bearer {NODE_TOKEN}"}),
            "gateway": (f"{gw.url}/v1/chat/completions", {"Authorization": f"Bearer {gw.key}"}),
        }
        # Warm both paths (connection pools, key cache, routing table).
        for name in targets:
            asyncio.run(_round(*targets[name], stream=False, concurrency=4, total=50))
        samples: dict[tuple[int, bool, str], list[dict[str, float]]] = {}
        rounds = [(rep, c, stream) for rep in range(args.reps) for c in levels for stream in (False, True)]
        for rep, c, stream in tqdm(rounds, desc="bench gateway", unit="round"):
            order = ["direct", "gateway"] if (rep + c) % 2 == 0 else ["gateway", "direct"]
            for name in order:
                cpu_before = cpu_seconds(gw.pid)
                lat, wall = asyncio.run(_round(*targets[name], stream=stream, concurrency=c, total=args.requests))
                cpu = cpu_seconds(gw.pid) - cpu_before
                samples.setdefault((c, stream, name), []).append(
                    {"rps": len(lat) / wall, "p50": percentile(lat, 0.5) * 1000, "p99": percentile(lat, 0.99) * 1000, "cpu_ms": cpu * 1000 / len(lat)}
                )
        rss = rss_mb(gw.pid)

    def med(c: int, stream: bool, name: str, field: str) -> float:
        return statistics.median(s[field] for s in samples[(c, stream, name)])

    rows = []
    misses = []
    for c in levels:
        for stream in (False, True):
            d50, g50 = med(c, stream, "direct", "p50"), med(c, stream, "gateway", "p50")
            cpu = med(c, stream, "gateway", "cpu_ms")
            rows.append(
                f"| {c} | {'16-chunk stream' if stream else 'non-stream'} | {med(c, stream, 'direct', 'rps'):.0f} | {med(c, stream, 'gateway', 'rps'):.0f} "
                f"| {d50:.2f} | {g50:.2f} | {g50 - d50:+.2f} | {med(c, stream, 'direct', 'p99'):.2f} | {med(c, stream, 'gateway', 'p99'):.2f} | {cpu:.2f} |"
            )
            limit = TARGETS["cpu_ms_stream" if stream else "cpu_ms_plain"]
            if cpu > limit:
                misses.append(f"c={c} {'stream' if stream else 'non-stream'}: {cpu:.2f} ms CPU per request > {limit}")
            if c == 1 and g50 - d50 > TARGETS["added_p50_ms_c1"]:
                misses.append(f"c=1 {'stream' if stream else 'non-stream'}: +{g50 - d50:.2f} ms p50 > {TARGETS['added_p50_ms_c1']}")
    if rss > TARGETS["rss_mb"]:
        misses.append(f"gateway RSS {rss:.0f} MB > {TARGETS['rss_mb']:.0f}")
    table = "\n".join(
        [
            "| c | mode | direct req/s | gateway req/s | direct p50 (ms) | gateway p50 (ms) | added p50 (ms) | direct p99 (ms) | gateway p99 (ms) | gateway CPU ms/request |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    report = (
        header(
            "gateway", argv,
            "setup: 1 gateway process (`rungateway`, Daphne) + stub node + this load generator on the same machine; "
            f"{args.requests} requests per round, medians over {args.reps} interleaved reps; gateway RSS at the end {rss:.0f} MB",
        )
        + f"\n{table}\n\nTargets (CPU <= 3 ms non-stream, <= 4 ms per 16-chunk stream, <= 2 ms added p50 at c=1, RSS <= 120 MB): {verdict(misses)}\n"
    )
    return finish(report, misses, record=not args.no_record)
