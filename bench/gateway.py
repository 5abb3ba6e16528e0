"""bench gateway: the gateway's own cost, against a stub node that answers at once.

The same load goes straight to the stub and through the gateway (auth, admission, dispatch,
relay, logging, metrics), interleaved, at several concurrencies, streaming and not. Reports
req/s, added latency and the gateway's CPU milliseconds per request (from its own CPU time).
"""

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import httpx
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-node-token"
BODY = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 16}
TARGETS = {"cpu_ms_plain": 3.0, "cpu_ms_stream": 4.0, "added_p50_ms_c1": 2.0, "rss_mb": 120.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--levels", default="1,8,32,64", help="concurrencies")
    parser.add_argument("--requests", type=int, default=300, help="requests per round")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (medians reported)")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/benchmarks.md")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


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


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def run(args: argparse.Namespace, argv: list[str]) -> int:
    levels = [int(x) for x in args.levels.split(",")]
    db = f"axs_bench_{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": os.environ.get("BENCH_DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{db}"),
        "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10"),
        "AXS_NODE_TOKEN": TOKEN,
        "AXS_ADMISSION_QUEUE": "100000",
        "AXS_LOG_LEVEL": "WARNING",
    }
    python = sys.executable
    print("==> Setting up a database, a key, a gateway and a stub node")
    subprocess.run([python, "manage.py", "bootstrap"], cwd=ROOT, env=env, check=True, capture_output=True)
    key = subprocess.run([python, "manage.py", "keys", "create", "bench"], cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout.strip()
    gw_port, stub_port = _free_port(), _free_port()
    gateway = subprocess.Popen([python, "manage.py", "rungateway", "--port", str(gw_port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    gw = f"http://127.0.0.1:{gw_port}"
    procs = [gateway]
    try:
        for _ in range(120):
            try:
                httpx.get(f"{gw}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        stub = subprocess.Popen(
            [python, "-m", "bench.stub_node", "--name", "stub", "--port", str(stub_port), "--gateway", gw, "--token", TOKEN],
            cwd=ROOT, env=env,
        )
        procs.append(stub)
        for _ in range(120):
            if httpx.get(f"{gw}/health").json().get("models"):
                break
            time.sleep(0.5)
        time.sleep(1.5)
        targets = {
            "direct": (f"http://127.0.0.1:{stub_port}/internal/v1/chat/completions", {"Authorization": f"Bearer {TOKEN}"}),
            "gateway": (f"{gw}/v1/chat/completions", {"Authorization": f"Bearer {key}"}),
        }
        # Warm both paths (connection pools, key cache, routing table).
        for name in targets:
            asyncio.run(_round(*targets[name], stream=False, concurrency=4, total=50))
        samples: dict[tuple[int, bool, str], list[dict[str, float]]] = {}
        rounds = [(rep, c, stream) for rep in range(args.reps) for c in levels for stream in (False, True)]
        for rep, c, stream in tqdm(rounds, desc="bench gateway", unit="round"):
            order = ["direct", "gateway"] if (rep + c) % 2 == 0 else ["gateway", "direct"]
            for name in order:
                cpu_before = _cpu_seconds(gateway.pid)
                lat, wall = asyncio.run(_round(*targets[name], stream=stream, concurrency=c, total=args.requests))
                cpu = _cpu_seconds(gateway.pid) - cpu_before
                samples.setdefault((c, stream, name), []).append(
                    {"rps": len(lat) / wall, "p50": _pct(lat, 0.5) * 1000, "p99": _pct(lat, 0.99) * 1000, "cpu_ms": cpu * 1000 / len(lat)}
                )
        rss = _rss_mb(gateway.pid)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True)

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
    verdict = "all met" if not misses else "MISSED: " + "; ".join(misses)
    report = (
        f"\n## bench gateway — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"- command: `.venv/bin/python -m bench {' '.join(argv)}`\n"
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}\n"
        f"- setup: 1 gateway process (`rungateway`, Daphne) + stub node + this load generator on the same machine; "
        f"{args.requests} requests per round, medians over {args.reps} interleaved reps; gateway RSS at the end {rss:.0f} MB\n\n"
        f"{table}\n\nTargets (CPU <= 3 ms non-stream, <= 4 ms per 16-chunk stream, <= 2 ms added p50 at c=1, RSS <= 120 MB): {verdict}\n"
    )
    print(report)
    if not args.no_record:
        with (ROOT / "docs" / "benchmarks.md").open("a") as fh:
            fh.write(report)
    return 0 if not misses else 1
