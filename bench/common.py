"""What several benches share: process figures from /proc, percentiles, the machine line, the report
file, and a real gateway (own database and Redis db) with stub nodes registered through it."""

import argparse
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
NODE_TOKEN = "bench-node-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except OSError:
        mem_kb = 0
    return f"{cpu}, {os.cpu_count()} cores, {mem_kb / 1024 / 1024:.0f} GiB RAM, {platform.system()} {platform.release()}"


def revision() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def command_line(argv: list[str]) -> str:
    return ".venv/bin/python -m bench " + shlex.join(argv)


def append_report(text: str) -> None:
    """Append one run's section to docs/benchmarks.md (created if missing)."""
    if not DOC.exists():
        DOC.write_text("# Benchmarks\n\nResults appended by `python -m bench <name>`; newest last.\n")
    with DOC.open("a") as doc:
        doc.write(text)


def verdict(missed: list[str]) -> str:
    return "all met." if not missed else "MISSED: " + "; ".join(missed)


def finish(report: str, missed: list[str], *, record: bool) -> int:
    """Print the report, append it to docs/benchmarks.md, and give the exit status (1 when a target is missed)."""
    print(report)
    if record:
        append_report(report)
        print(f"Appended to {DOC.relative_to(ROOT)}")
    return 1 if missed else 0


def add_stub_arguments(parser: argparse.ArgumentParser, *, nodes: int, slots: int, token_delay: float) -> None:
    """Options of the benches that run stub nodes behind a gateway."""
    parser.add_argument("--nodes", type=int, default=nodes, help="stub nodes")
    parser.add_argument("--slots", type=int, default=slots, help="slots per stub node (requests it serves at once)")
    parser.add_argument("--token-delay", type=float, default=token_delay, help="stub seconds per streamed chunk (16 chunks)")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/benchmarks.md")


def setup_django() -> None:
    """Django in this process, for the project's own code (no database use); quiet unless something goes wrong."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "axserving.settings")
    os.environ.setdefault("AXS_LOG_LEVEL", "WARNING")
    import django

    django.setup()


def bundled_model() -> str:
    setup_django()
    from models_registry.services import bundled_model_path

    return str(bundled_model_path())


@dataclass
class Gateway:
    """A running `rungateway` process with its own database, an API key, and the stub nodes started on it."""

    url: str
    key: str
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def manage(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True, capture_output=True, text=True)
        return done.stdout.strip()

    def alias_bundled_model(self, name: str) -> None:
        """Register the bundled GGUF under another model id (stub nodes never load it; it only names a route set)."""
        self.manage("models", "register", bundled_model(), "--id", name)

    def start_stub(self, name: str, *, models: list[str], slots: int, token_delay: float) -> str:
        """Start a stub node that registers and heartbeats through this gateway; returns its address."""
        port = free_port()
        stub = subprocess.Popen(
            [sys.executable, "-m", "bench.stub_node", "--name", name, "--port", str(port), "--gateway", self.url,
             "--token", NODE_TOKEN, "--model", ",".join(models), "--slots", str(slots), "--token-delay", str(token_delay)],
            cwd=ROOT, env=self.env,
        )
        self.children.append(stub)
        return f"http://127.0.0.1:{port}"

    def wait_servable(self, timeout: float = 60) -> None:
        """Until the gateway's health lists a servable model."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(f"{self.url}/health", timeout=5).json().get("models"):
                return
            time.sleep(0.5)
        raise SystemExit(f"no model became servable through {self.url} in {timeout:.0f}s")


@contextmanager
def gateway(*, redis_db: int, env: dict[str, str] | None = None) -> Iterator[Gateway]:
    """Bootstrap a fresh database, create a key, start one gateway; stop everything and drop the database after.

    BENCH_DATABASE_URL / BENCH_REDIS_URL override the database and Redis; by default each run gets its own
    database and the caller's Redis db number, so benches run by different people do not share state.
    """
    db = f"axs_bench_{uuid.uuid4().hex[:8]}"
    full_env = {
        **os.environ,
        "DATABASE_URL": os.environ.get("BENCH_DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{db}"),
        "REDIS_URL": os.environ.get("BENCH_REDIS_URL", f"redis://127.0.0.1:6379/{redis_db}"),
        "AXS_NODE_TOKEN": NODE_TOKEN,
        "AXS_ADMISSION_QUEUE": "100000",
        "AXS_LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    python = sys.executable
    subprocess.run([python, "manage.py", "bootstrap"], cwd=ROOT, env=full_env, check=True, capture_output=True)
    key = subprocess.run(
        [python, "manage.py", "keys", "create", "bench"], cwd=ROOT, env=full_env, check=True, capture_output=True, text=True
    ).stdout.strip()
    port = free_port()
    process = subprocess.Popen([python, "manage.py", "rungateway", "--port", str(port)], cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL)
    gw = Gateway(url=f"http://127.0.0.1:{port}", key=key, process=process, env=full_env)
    try:
        for _ in range(120):
            try:
                httpx.get(f"{gw.url}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield gw
    finally:
        # Nodes first: a real node deregisters through the gateway on its way out.
        for group in (gw.children, [process]):
            for p in group:
                p.terminate()
            for p in group:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        if "BENCH_DATABASE_URL" not in os.environ:
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True)


def header(name: str, argv: list[str], *lines: str) -> str:
    """The first lines of a report section: title, exact command, machine, versions."""
    return "\n".join(
        [
            f"\n## bench {name} — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n",
            f"- command: `{command_line(argv)}`",
            f"- machine: {machine()}",
            f"- versions: axserving {revision()}, Python {platform.python_version()}",
            *(f"- {line}" for line in lines),
            "",
        ]
    )
