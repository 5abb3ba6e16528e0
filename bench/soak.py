"""bench soak: steady mixed load through one gateway for minutes; fails on leaks, hangs and drift.

Clients send chat and completions, streaming and not, and some hang up mid-stream, to stub
nodes (optionally also to a real node with the bundled SmolLM2). The gateway's RSS is sampled
every interval; after a warm-up the run is cut in quarters and the last is compared with the
first: RSS growth, p95 latency drift. A request not finished by its deadline is hung.
"""

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import httpx
from tqdm import tqdm

from bench.common import ROOT, Gateway, add_stub_arguments, finish, free_port, gateway, header, percentile, rss_mb, verdict

RSS_GROWTH_TARGET = 0.05
P95_DRIFT_TARGET = 0.10
STUB_MODEL = "soak-stub"
REAL_MODEL = "smollm2"
DONE = b"data: [DONE]\n\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=3.0, help="how long the load runs")
    parser.add_argument("--warmup", type=float, default=0.2, help="share of the run left out of the comparison")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    add_stub_arguments(parser, nodes=2, slots=8, token_delay=0.01)
    parser.add_argument("--disconnect-share", type=float, default=0.1, help="share of streams the client drops mid-way")
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds after which an unfinished request is hung")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--real-node", action="store_true", help="also run a real node (bundled SmolLM2) and send it 1 in 10 requests")
    parser.add_argument("--seed", type=int, default=8)


@dataclass(frozen=True, slots=True)
class Done:
    """One finished request: when it ended (s since the start), what it was, how long, how it ended."""

    at: float
    kind: str
    seconds: float
    outcome: str  # ok | dropped (client hung up on purpose) | hung | error


@dataclass
class Soak:
    done: list[Done] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (s since start, MB)
    errors: Counter[str] = field(default_factory=Counter)


def pick_kind(rng: random.Random, *, disconnect_share: float, real_share: float) -> str:
    """`<model>:<endpoint>:<mode>`, mode one of plain, stream, drop (stream the client leaves early)."""
    model = "real" if rng.random() < real_share else "stub"
    endpoint = "chat" if rng.random() < 0.6 else "completions"
    if rng.random() < 0.4:
        return f"{model}:{endpoint}:plain"
    return f"{model}:{endpoint}:{'drop' if rng.random() < disconnect_share else 'stream'}"


def request_body(kind: str) -> tuple[str, dict[str, object]]:
    model, endpoint, mode = kind.split(":")
    body: dict[str, object] = {
        "model": REAL_MODEL if model == "real" else STUB_MODEL,
        "max_tokens": 8 if model == "real" else 16,
        "stream": mode != "plain",
    }
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": "Say hi."}]
        return "/v1/chat/completions", body
    body["prompt"] = "Once upon a time"
    return "/v1/completions", body


async def one_request(http: aiohttp.ClientSession, url: str, kind: str, rng: random.Random) -> str:
    """Send one request of this kind; the outcome, or an error label."""
    path, body = request_body(kind)
    async with http.post(url + path, json=body) as r:
        if r.status != 200:
            await r.read()
            return f"status {r.status}"
        if not body["stream"]:
            data = await r.json()
            return "ok" if data.get("choices") else "no choices"
        if kind.endswith(":drop"):
            for _ in range(rng.randint(1, 4)):
                await r.content.readany()
            r.close()  # drops the connection: the gateway must cancel the generation on the node
            return "dropped"
        tail = b""
        async for chunk in r.content.iter_any():
            tail = (tail + chunk)[-256:]
        if not tail.endswith(DONE):
            return "stream without [DONE]"
        return "error event" if b'"error"' in tail else "ok"


async def drive(gw: Gateway, args: argparse.Namespace, progress: tqdm) -> Soak:
    """Run the clients and the RSS sampler until the time is up."""
    soak = Soak()
    seconds = args.minutes * 60
    started = time.perf_counter()
    stop_at = started + seconds
    real_share = 0.1 if args.real_node else 0.0
    headers = {"Authorization": f"Bearer {gw.key}"}
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=0)) as http:

        async def client(k: int) -> None:
            rng = random.Random(args.seed * 1000 + k)
            while time.perf_counter() < stop_at:
                kind = pick_kind(rng, disconnect_share=args.disconnect_share, real_share=real_share)
                t0 = time.perf_counter()
                try:
                    outcome = await asyncio.wait_for(one_request(http, gw.url, kind, rng), timeout=args.deadline)
                except TimeoutError:
                    outcome = "hung"
                except aiohttp.ClientError as exc:
                    outcome = type(exc).__name__
                end = time.perf_counter()
                if outcome not in ("ok", "dropped", "hung"):
                    soak.errors[outcome] += 1
                    outcome = "error"
                soak.done.append(Done(at=end - started, kind=kind, seconds=end - t0, outcome=outcome))

        async def sampler() -> None:
            while (now := time.perf_counter()) < stop_at:
                soak.rss.append((now - started, rss_mb(gw.pid)))
                hung = sum(d.outcome == "hung" for d in soak.done)
                progress.set_postfix_str(f"{len(soak.done)} req, RSS {soak.rss[-1][1]:.0f} MB, hung {hung}, errors {sum(soak.errors.values())}")
                progress.n = min(round(now - started), round(seconds))
                progress.refresh()
                await asyncio.sleep(args.interval)

        await asyncio.gather(sampler(), *(client(k) for k in range(args.clients)))
    progress.n = round(seconds)
    progress.refresh()
    return soak


@dataclass
class Quarter:
    index: int
    start: float
    end: float
    requests: int
    rps: float
    p50_ms: float
    p95_ms: float
    rss_mb: float


def quarters(soak: Soak, *, seconds: float, warmup: float) -> list[Quarter]:
    """The measured window (after warm-up) in four equal parts: stub traffic latency and the gateway's median RSS."""
    begin = seconds * warmup
    width = (seconds - begin) / 4
    out = []
    for i in range(4):
        lo, hi = begin + i * width, begin + (i + 1) * width
        # Completed requests only: dropped streams and real-node traffic would blur the gateway's own trend.
        lat = [d.seconds for d in soak.done if lo <= d.at < hi and d.outcome == "ok" and d.kind.startswith("stub:")]
        rss = [mb for at, mb in soak.rss if lo <= at < hi]
        out.append(
            Quarter(
                index=i + 1, start=lo, end=hi, requests=sum(1 for d in soak.done if lo <= d.at < hi), rps=len(lat) / width if width else 0.0,
                p50_ms=percentile(lat, 0.5) * 1000, p95_ms=percentile(lat, 0.95) * 1000,
                rss_mb=statistics.median(rss) if rss else float("nan"),
            )
        )
    return out


def soak_misses(parts: list[Quarter], *, hung: int, errors: int, leftover: int) -> list[str]:
    """RSS growth > 5 %, p95 up > 10 % (last quarter vs first), any hung or failed request, requests left in flight."""
    first, last = parts[0], parts[-1]
    missed = []
    growth = last.rss_mb / first.rss_mb - 1
    if not growth <= RSS_GROWTH_TARGET:
        missed.append(f"gateway RSS grew {100 * growth:+.1f}% (> {100 * RSS_GROWTH_TARGET:.0f}%)")
    drift = last.p95_ms / first.p95_ms - 1
    if not drift <= P95_DRIFT_TARGET:
        missed.append(f"p95 latency drifted {100 * drift:+.1f}% (> {100 * P95_DRIFT_TARGET:.0f}%)")
    if hung:
        missed.append(f"{hung} hung request(s)")
    if errors:
        missed.append(f"{errors} failed request(s)")
    if leftover:
        missed.append(f"{leftover} request(s) still in flight at the gateway after the load stopped")
    return missed


def quarter_table(parts: list[Quarter]) -> str:
    lines = ["| quarter | window (s) | requests | completed stub req/s | p50 (ms) | p95 (ms) | gateway RSS (MB) |", "|---|---|---|---|---|---|---|"]
    for q in parts:
        lines.append(
            f"| Q{q.index} | {q.start:.0f}-{q.end:.0f} | {q.requests} | {q.rps:.1f} | {q.p50_ms:.0f} | {q.p95_ms:.0f} | {q.rss_mb:.1f} |"
        )
    return "\n".join(lines)


def kind_table(soak: Soak) -> str:
    lines = ["| request kind | sent | ok | dropped by client | hung | failed | p95 (ms) |", "|---|---|---|---|---|---|---|"]
    for kind in sorted({d.kind for d in soak.done}):
        rows = [d for d in soak.done if d.kind == kind]
        count = Counter(d.outcome for d in rows)
        ok = [d.seconds for d in rows if d.outcome == "ok"]
        p95 = f"{percentile(ok, 0.95) * 1000:.0f}" if ok else "-"
        lines.append(f"| {kind} | {len(rows)} | {count['ok']} | {count['dropped']} | {count['hung']} | {count['error']} | {p95} |")
    return "\n".join(lines)


def start_real_node(gw: Gateway) -> None:
    """A real node with the bundled SmolLM2, registered through the gateway; waits until it answers."""
    node = subprocess.Popen(
        [sys.executable, "manage.py", "runnode", "--name", "soak-real", "--listen", f"127.0.0.1:{free_port()}",
         "--gateway", gw.url, "--model", REAL_MODEL],
        cwd=ROOT, env={**gw.env, "AXS_N_THREADS": "1"}, stdout=subprocess.DEVNULL,
    )
    gw.children.append(node)
    body = {"model": REAL_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    for _ in range(240):
        if node.poll() is not None:
            raise SystemExit("the real node exited early")
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {gw.key}"}, timeout=60)
        if r.status_code == 200:
            return
        time.sleep(0.5)
    raise SystemExit("the real node did not become ready")


def cancelled_at_stubs(stubs: list[str]) -> int:
    """Streams the stub nodes saw end early because the gateway hung up on them."""
    return sum(int(httpx.get(f"{address}/internal/stats", timeout=5).json()["cancelled"]) for address in stubs)


def leftover_inflight(gw: Gateway, timeout: float = 10.0) -> int:
    """What the gateway still counts in flight once every client is gone (0 unless a request leaked)."""
    deadline = time.monotonic() + timeout
    while True:
        inflight = int(httpx.get(f"{gw.url}/health", timeout=5).json().get("inflight", 0))
        if inflight <= 0 or time.monotonic() > deadline:
            return max(inflight, 0)
        time.sleep(0.5)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    seconds = args.minutes * 60
    print(f"==> Gateway + {args.nodes} stub nodes" + (" + a real SmolLM2 node" if args.real_node else ""))
    with gateway(redis_db=12) as gw:
        gw.alias_bundled_model(STUB_MODEL)
        stubs = [
            gw.start_stub(f"soak-node-{i}", models=[STUB_MODEL], slots=args.slots, token_delay=args.token_delay)
            for i in range(1, args.nodes + 1)
        ]
        gw.wait_servable()
        if args.real_node:
            start_real_node(gw)
        time.sleep(2.0)  # every stub heartbeated and is in the routing table
        rss_start = rss_mb(gw.pid)
        with tqdm(total=round(seconds), unit="s", desc="bench soak") as progress:
            soak = asyncio.run(drive(gw, args, progress))
        leftover = leftover_inflight(gw)
        rss_end = rss_mb(gw.pid)
        cancelled = cancelled_at_stubs(stubs)
    parts = quarters(soak, seconds=seconds, warmup=args.warmup)
    outcomes = Counter(d.outcome for d in soak.done)
    missed = soak_misses(parts, hung=outcomes["hung"], errors=outcomes["error"], leftover=leftover)
    first, last = parts[0], parts[-1]
    stub_drops = sum(1 for d in soak.done if d.outcome == "dropped" and d.kind.startswith("stub:"))
    errors = ", ".join(f"{label} x{n}" for label, n in soak.errors.most_common()) or "none"
    report = (
        header(
            "soak", argv,
            f"setup: 1 gateway process (`rungateway`) + {args.nodes} stub nodes ({args.slots} slots, {args.token_delay * 1000:.0f} ms "
            f"x 16 chunks)" + (" + a real node (SmolLM2, 1 thread, 1 in 10 requests)" if args.real_node else "")
            + f"; {args.clients} clients back to back, {100 * args.disconnect_share:.0f}% of streams dropped mid-way by the client",
            f"{len(soak.done)} requests in {args.minutes:g} min; warm-up {100 * args.warmup:.0f}% left out; "
            f"RSS sampled every {args.interval:g} s ({rss_start:.1f} MB before the load, {rss_end:.1f} MB after)",
        )
        + f"\n{quarter_table(parts)}\n\n{kind_table(soak)}\n\n"
        + f"Last vs first quarter: RSS {100 * (last.rss_mb / first.rss_mb - 1):+.1f}%, p95 {100 * (last.p95_ms / first.p95_ms - 1):+.1f}%; "
        + f"hung {outcomes['hung']}; failed {outcomes['error']} ({errors}); left in flight {leftover}; "
        + f"streams to stub nodes dropped by clients {stub_drops}, cancelled as seen by the stubs {cancelled}.\n\n"
        + f"Targets (RSS growth <= 5%, p95 drift <= +10%, no hung or failed request, nothing left in flight): {verdict(missed)}\n"
    )
    return finish(report, missed, record=not args.no_record)
