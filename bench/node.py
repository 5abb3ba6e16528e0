"""Our node vs llama_cpp.server and llama.cpp's llama-server: streaming completions on the same GGUF, threads and prompts."""

import argparse
import asyncio
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import aiohttp
import orjson
from tqdm import tqdm

from bench import decode
from bench.common import DOC, ROOT, append_report, bundled_model, command_line, free_port, machine, percentile, revision

OURS, BASELINE, REFERENCE = "axserving node", "llama_cpp.server", "llama-server"
# Built by scripts/build-llama-server from the llama.cpp vendored in llama-cpp-python's sdist.
LLAMA_SERVER = ROOT / "var" / "llama-server" / "build" / "bin" / "llama-server"
# Story openings: the model keeps writing, so requests rarely stop before max_tokens.
PROMPTS = [
    "Once upon a time, in a village at the edge of a great forest, there lived",
    "The old lighthouse keeper climbed the stairs one last time and",
    "In the year 2150, the first colony ship reached the red planet, and",
    "The recipe had been in my family for generations. It began with",
    "Deep beneath the ocean, a small submarine drifted past",
    "The detective looked at the empty room and said",
    "When the dragon finally woke up, the knights",
    "Every morning the baker opened his shop at dawn, because",
    "The letter arrived on a rainy Tuesday, and it said",
    "At the top of the mountain, the climbers found",
    "The robot had never seen snow before. When it",
    "Long ago, the river that runs through our town",
    "The train was late again, so Maria decided to",
    "In the middle of the desert stood a door, and behind it",
    "The school's science fair was the biggest event of the year, and",
    "My grandfather kept a wooden box under his bed. Inside it",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", default="1,4,8,16", help="comma-separated client counts")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions; medians are reported")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both servers")
    parser.add_argument("--slots", type=int, default=0, help="our node's sequence slots (0 = its default)")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--model", default="", help="GGUF path (default: the bundled SmolLM2)")
    parser.add_argument(
        "--llama-server", default=str(LLAMA_SERVER), help="llama.cpp's llama-server binary (scripts/build-llama-server); skipped when absent"
    )
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/benchmarks.md")


@dataclass
class Server:
    name: str
    url: str
    headers: dict[str, str]
    body: dict[str, object]
    process: subprocess.Popen[bytes]


@dataclass
class Round:
    tokens: int = 0
    wall: float = 0.0
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    failures: int = 0


def llama_server(args: argparse.Namespace) -> Path | None:
    """The llama-server binary to compare with, or None when it is not built."""
    path = Path(args.llama_server)
    return path if path.is_file() and os.access(path, os.X_OK) else None


@contextmanager
def servers(args: argparse.Namespace, model: str, levels: list[int]) -> Iterator[list[Server]]:
    """Start our bare node, llama_cpp.server and (when built) llama-server on the same model; stop them on the way out."""
    log_dir = ROOT / "test-artifacts"
    log_dir.mkdir(exist_ok=True)
    token = secrets.token_urlsafe(16)
    ours_port, base_port, ref_port = free_port(), free_port(), free_port()
    ours_cmd = [sys.executable, "-m", "bench.node_server", "--model", model, "--port", str(ours_port),
                "--threads", str(args.threads), "--slots", str(args.slots), "--n-ctx", str(args.n_ctx)]
    base_cmd = [sys.executable, "-m", "llama_cpp.server", "--model", model, "--port", str(base_port), "--host", "127.0.0.1",
                "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads), "--n_ctx", str(args.n_ctx),
                # Queue concurrent requests instead of cancelling the running stream (its default).
                "--interrupt_requests", "False"]
    plan = [
        (OURS, ours_cmd, f"http://127.0.0.1:{ours_port}/internal/v1/completions", {"Authorization": f"Bearer {token}"}, True),
        (BASELINE, base_cmd, f"http://127.0.0.1:{base_port}/v1/completions", {}, False),
    ]
    binary = llama_server(args)
    if binary is not None:
        # One slot per client at the highest concurrency, continuous batching on. llama-server
        # splits -c evenly across its slots, so each gets the n_ctx our node gives each sequence.
        parallel = max(levels)
        ref_cmd = [str(binary), "--model", model, "--host", "127.0.0.1", "--port", str(ref_port),
                   "--threads", str(args.threads), "--threads-batch", str(args.threads),
                   "--ctx-size", str(args.n_ctx * parallel), "--parallel", str(parallel), "--cont-batching"]
        # It closes the connection after each stream, which a pooled client would only find
        # out on its next request: ask for a fresh connection every time.
        plan.append((REFERENCE, ref_cmd, f"http://127.0.0.1:{ref_port}/v1/completions", {"Connection": "close"}, False))
    started: list[Server] = []
    try:
        for name, cmd, url, headers, prompt_as_list in plan:
            log = (log_dir / f"bench-{name.replace(' ', '-').replace('.', '-')}.log").open("wb")
            process = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "BENCH_NODE_TOKEN": token}, stdout=log, stderr=subprocess.STDOUT)
            body = {"model": "bench", "max_tokens": args.max_tokens, "temperature": 0, "stream": True, "prompt_as_list": prompt_as_list}
            started.append(Server(name=name, url=url, headers=headers, body=body, process=process))
        for server in started:
            wait_ready(server)
        yield started
    finally:
        for server in started:
            server.process.terminate()
        for server in started:
            try:
                server.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.process.kill()


def wait_ready(server: Server, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SystemExit(f"{server.name} exited early (see test-artifacts/bench-*.log)")
        try:
            asyncio.run(one_request(server, PROMPTS[0], max_tokens=2))
            return
        except (aiohttp.ClientError, OSError, RuntimeError):
            time.sleep(0.5)
    raise SystemExit(f"{server.name} did not become ready in {timeout:.0f}s")


async def one_request(server: Server, prompt: str, *, max_tokens: int | None = None, session: aiohttp.ClientSession | None = None) -> tuple[float, float, int]:
    """Send one streaming completion; return (time to first token, latency, tokens)."""
    body = {k: v for k, v in server.body.items() if k != "prompt_as_list"}
    body["prompt"] = [prompt] if server.body["prompt_as_list"] else prompt
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        started = time.perf_counter()
        first, tokens = 0.0, 0
        async with session.post(server.url, data=orjson.dumps(body), headers={**server.headers, "Content-Type": "application/json"}) as response:
            if response.status != 200:
                raise RuntimeError(f"{server.name} answered {response.status}")
            async for line in response.content:
                line = line.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = orjson.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(f"{server.name} stream error: {chunk['error']}")
                # All three servers send one chunk per generated token (llama-server as well, for
                # requests without stop strings); empty ones only carry finish_reason or usage.
                if any(choice.get("text") for choice in chunk.get("choices", [])):
                    tokens += 1
                    if not first:
                        first = time.perf_counter() - started
        return first, time.perf_counter() - started, tokens
    finally:
        if own:
            await session.close()


async def load_round(server: Server, concurrency: int, per_client: int, progress: tqdm) -> Round:
    """`concurrency` clients, each sending `per_client` requests back to back."""
    result = Round()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(k: int) -> None:
            for j in range(per_client):
                prompt = PROMPTS[(k * per_client + j) % len(PROMPTS)]
                try:
                    ttft, latency, tokens = await one_request(server, prompt, session=session)
                except (aiohttp.ClientError, RuntimeError):
                    result.failures += 1
                else:
                    result.ttft.append(ttft)
                    result.latency.append(latency)
                    result.tokens += tokens
                progress.update(1)

        started = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(concurrency)))
        result.wall = time.perf_counter() - started
    return result


@dataclass
class Summary:
    tok_s: float
    ttft_p50: float
    ttft_p99: float
    latency_p50: float
    failures: int


def summarize(rounds: list[Round]) -> Summary:
    """Medians over repetitions of each round's aggregate figures."""
    return Summary(
        tok_s=statistics.median(r.tokens / r.wall for r in rounds),
        ttft_p50=statistics.median(percentile(r.ttft, 0.5) for r in rounds),
        ttft_p99=statistics.median(percentile(r.ttft, 0.99) for r in rounds),
        latency_p50=statistics.median(percentile(r.latency, 0.5) for r in rounds),
        failures=sum(r.failures for r in rounds),
    )


def table(levels: list[int], names: list[str], results: dict[tuple[str, int], Summary]) -> str:
    ref = REFERENCE in names
    head = "| c | server | tok/s | TTFT p50 (s) | TTFT p99 (s) | latency p50 (s) | tok/s vs llama_cpp.server | TTFT p50 vs llama_cpp.server |"
    rule = "|---|---|---|---|---|---|---|---|"
    if ref:
        head += " tok/s vs llama-server | TTFT p50 vs llama-server |"
        rule += "---|---|"
    lines = [head + " failed |", rule + "---|"]
    for c in levels:
        base = results[(BASELINE, c)]
        for name in names:
            s = results[(name, c)]
            row = (
                f"| {c} | {name} | {s.tok_s:.1f} | {s.ttft_p50:.2f} | {s.ttft_p99:.2f} | {s.latency_p50:.2f} "
                f"| {s.tok_s / base.tok_s:.2f}x | {s.ttft_p50 / base.ttft_p50:.2f}x |"
            )
            if ref:
                r = results[(REFERENCE, c)]
                row += f" {s.tok_s / r.tok_s:.2f}x | {s.ttft_p50 / r.ttft_p50:.2f}x |"
            lines.append(row + f" {s.failures} |")
    return "\n".join(lines)


def check_targets(levels: list[int], names: list[str], results: dict[tuple[str, int], Summary]) -> list[str]:
    """Issue 8's targets against llama_cpp.server and, when measured, llama-server; returns the missed ones."""
    missed = []
    for c in levels:
        ours, base = results[(OURS, c)], results[(BASELINE, c)]
        if ours.failures:
            missed.append(f"c={c}: {ours.failures} of our requests failed")
        if c == 8 and ours.tok_s < 2.5 * base.tok_s:
            missed.append(f"c=8: {ours.tok_s:.1f} tok/s is below 2.5x llama_cpp.server ({2.5 * base.tok_s:.1f})")
        if c == 8 and ours.ttft_p50 > base.ttft_p50:
            missed.append(f"c=8: TTFT p50 {ours.ttft_p50:.2f}s is above llama_cpp.server's {base.ttft_p50:.2f}s")
        if c == 16 and ours.tok_s < base.tok_s:
            missed.append(f"c=16: {ours.tok_s:.1f} tok/s is below llama_cpp.server's {base.tok_s:.1f}")
        if REFERENCE in names and c in (8, 16):
            ref = results[(REFERENCE, c)]
            if ours.tok_s < 1.1 * ref.tok_s:
                missed.append(f"c={c}: {ours.tok_s:.1f} tok/s is below 1.1x llama-server ({1.1 * ref.tok_s:.1f})")
            if ours.ttft_p50 > 1.2 * ref.ttft_p50:
                missed.append(f"c={c}: TTFT p50 {ours.ttft_p50:.2f}s is above 1.2x llama-server's ({1.2 * ref.ttft_p50:.2f}s)")
    return missed


def ceiling_table(levels: list[int], results: dict[tuple[str, int], Summary], rates: dict[int, float]) -> str:
    """How close each server's tok/s comes to what llama_decode alone allows, and where 2.5x llama_cpp.server would be."""
    lines = [
        "| c | llama_decode alone (tok/s) | axserving node | llama_cpp.server | 2.5x llama_cpp.server |",
        "|---|---|---|---|---|",
    ]
    for c in levels:
        rate, base = rates[c], results[(BASELINE, c)].tok_s
        lines.append(
            f"| {c} | {rate:.1f} | {100 * results[(OURS, c)].tok_s / rate:.0f}% | {100 * base / rate:.0f}% | {250 * base / rate:.0f}% |"
        )
    return "\n".join(lines)


def reference_note(args: argparse.Namespace, levels: list[int]) -> str:
    binary = llama_server(args)
    if binary is None:
        return "- not measured: llama.cpp's own `llama-server` (not built: run `scripts/build-llama-server`)"
    parallel = max(levels)
    shown = binary.relative_to(ROOT) if binary.is_relative_to(ROOT) else binary
    return (
        f"- llama-server: `{shown}` (the llama.cpp vendored in the llama-cpp-python {version('llama-cpp-python')} sdist), "
        f"`--parallel {parallel} --cont-batching --threads {args.threads} --threads-batch {args.threads} "
        f"--ctx-size {args.n_ctx * parallel}` ({args.n_ctx} per slot)"
    )


def record(args: argparse.Namespace, argv: list[str], model: str, rev: str, body: str, missed: list[str], reference: str) -> None:
    command = command_line(argv)
    versions = ", ".join(f"{p} {version(p)}" for p in ("llama-cpp-python", "aiohttp", "uvicorn", "fastapi"))
    entry = [
        f"\n## bench node — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n",
        f"- command: `{command}`",
        f"- machine: {machine()}",
        f"- versions: axserving {rev}, Python {platform.python_version()}, {versions}",
        f"- model: `{Path(model).name}`, {args.threads} threads each, n_ctx {args.n_ctx}, streaming completions, "
        f"max_tokens {args.max_tokens}, temperature 0, {args.requests_per_client} requests per client, "
        f"medians over {args.reps} interleaved reps",
        reference,
        "",
        body,
        "",
        "Targets: " + ("all met." if not missed else "MISSED: " + "; ".join(missed)),
        "",
    ]
    append_report("\n".join(entry))


def run(args: argparse.Namespace, *, argv: list[str]) -> int:
    levels = [int(c) for c in args.concurrency.split(",")]
    model = args.model or bundled_model()
    rev = revision()  # of the code the servers start with
    results: dict[tuple[str, int], list[Round]] = {}
    names = [OURS, BASELINE] + ([REFERENCE] if llama_server(args) else [])
    total = len(names) * args.reps * sum(c * args.requests_per_client for c in levels)
    with servers(args, model, levels) as started, tqdm(total=total, unit="req", desc="bench node") as progress:
        for rep in range(args.reps):
            for k, c in enumerate(levels):
                # Rotate who goes first, so drift on a noisy machine hits all alike.
                shift = (rep + k) % len(started)
                for server in started[shift:] + started[:shift]:
                    progress.set_postfix_str(f"rep {rep + 1} c={c} {server.name}")
                    outcome = asyncio.run(load_round(server, c, args.requests_per_client, progress))
                    results.setdefault((server.name, c), []).append(outcome)
    summaries = {key: summarize(rounds) for key, rounds in results.items()}
    print("==> Timing llama_decode alone at each concurrency (the servers are stopped)")
    rates = decode.ceiling(model, threads=args.threads, n_ctx=args.n_ctx, levels=levels)
    body = (
        table(levels, names, summaries)
        + "\n\nThe decode ceiling (`bench/decode.py`: one `llama_decode` step per token for every sequence, the engine's context"
        " settings, no HTTP, sampling or prefill), and each server's share of it:\n\n"
        + ceiling_table(levels, summaries, rates)
    )
    missed = check_targets(levels, names, summaries)
    print()
    print(body)
    print()
    print("Targets: all met." if not missed else "Targets MISSED:\n  " + "\n  ".join(missed))
    if not args.no_record:
        record(args, argv, model, rev, body, missed, reference_note(args, levels))
        print(f"Appended to {DOC.relative_to(ROOT)}")
    return 1 if missed else 0
