"""Serving metrics: in-process prometheus_client objects and the helpers that record them.

Everything recorded on the hot path is a counter increment or a histogram observation in this
process's memory (no I/O, no lock wider than the metric's own). Gauges that describe state (the
admission queue, the fleet's nodes) are read only when /metrics is scraped, by collectors.

Each gateway process is scraped on its own port (see docs/operations.md), so the default
registry is used as is; prometheus multiprocess mode is not, since the collectors read live
state that only a single process has.

Label values are bounded: models and nodes come from the registry, endpoints and error codes from
the code, and projects are capped at MAX_PROJECTS distinct values per process ("other" after).
"""

import collections
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# The `_created` series double every counter's size on the page and nothing here reads them.
disable_created_metrics()

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter(
    "axs_requests", "OpenAI API requests answered, by endpoint, model, project and HTTP status.",
    ["endpoint", "model", "project", "status"],
)
REJECTIONS = Counter(
    "axs_rejections", "Requests answered with an error, by endpoint and error code (the envelope's `code`).",
    ["endpoint", "reason"],
)
TTFT = Histogram(
    "axs_time_to_first_token_seconds", "Streaming requests: arrival at the gateway to the first token relayed.",
    ["model"], buckets=TTFT_BUCKETS,
)
LATENCY = Histogram(
    "axs_request_duration_seconds", "Forwarded requests: arrival at the gateway to the last byte relayed.",
    ["endpoint", "model"], buckets=LATENCY_BUCKETS,
)
TOKENS = Counter("axs_tokens", "Tokens processed, by model, project and kind (prompt, completion).", ["model", "project", "kind"])
ADMISSION_WAIT = Histogram(
    "axs_admission_wait_seconds", "Time a request waited in this gateway's admission queue.", ["model"], buckets=WAIT_BUCKETS
)
RETRIES = Counter(
    "axs_node_retries", "Requests retried on another node before the first byte (failover), by reason.", ["model", "reason"]
)
STREAM_FAILURES = Counter(
    "axs_stream_failures", "Streams that ended with an error event after the first byte, by reason.", ["model", "reason"]
)
OVERHEAD = Histogram(
    "axs_gateway_overhead_seconds", "Time spent in the gateway per proxied request, excluding the node (x-gateway-overhead-ms).",
    ["endpoint"], buckets=OVERHEAD_BUCKETS,
)
REALTIME_MESSAGES = Counter(
    "axs_realtime_messages", "WebSocket inference messages received, by type.", ["type"]
)

MAX_PROJECTS = 200
MAX_REASONS = 100
OTHER = "other"
UNKNOWN = "-"


class _BoundedLabel:
    """Pass the first `limit` distinct values through; any later new value becomes 'other'."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if not value:
            return UNKNOWN
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return OTHER
        self.seen.add(value)
        return value


_project = _BoundedLabel(MAX_PROJECTS)
_reason = _BoundedLabel(MAX_REASONS)


def project_of(key: Any) -> str:
    """The project label of an API key: its project's name where governance set one, else the key's name."""
    if key is None:
        return UNKNOWN
    return _project(str(getattr(key, "project_name", "") or getattr(key, "name", "") or ""))


# --- the dashboard's live window -------------------------------------------------------------


@dataclass
class Window:
    """What happened in this process since the dashboard ticker last looked."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    recent_errors: list[dict[str, Any]] = field(default_factory=list)


class LiveWindow:
    """Per-process figures for the dashboard, swapped out once a second by the ticker."""

    MAX_TTFT_SAMPLES = 512
    MAX_ERRORS = 20

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the all-in-one's node thread may record too
        self._window = Window()
        self.totals: collections.Counter[str] = collections.Counter()

    def add(self, *, requests: int = 0, errors: int = 0, prompt: int = 0, completion: int = 0) -> None:
        with self._lock:
            w = self._window
            w.requests += requests
            w.errors += errors
            w.prompt_tokens += prompt
            w.completion_tokens += completion

    def ttft(self, seconds: float) -> None:
        with self._lock:
            if len(self._window.ttft) < self.MAX_TTFT_SAMPLES:
                self._window.ttft.append(seconds)

    def error(self, entry: dict[str, Any]) -> None:
        with self._lock:
            errors = self._window.recent_errors
            errors.append(entry)
            if len(errors) > self.MAX_ERRORS:
                del errors[0]

    def take(self) -> Window:
        """The window since the last call; starts a new one."""
        with self._lock:
            window, self._window = self._window, Window()
        self.totals.update(
            requests=window.requests,
            errors=window.errors,
            prompt_tokens=window.prompt_tokens,
            completion_tokens=window.completion_tokens,
        )
        return window


live = LiveWindow()


# --- recording (hot path: in-memory only) ----------------------------------------------------


def record_request(*, endpoint: str, model: str, project: str, status: int) -> None:
    """Count one answered OpenAI API request (and its error in the live window)."""
    REQUESTS.labels(endpoint, model or UNKNOWN, project, str(status)).inc()
    live.add(requests=1, errors=1 if status >= 400 else 0)


def record_rejection(*, endpoint: str, model: str, status: int, code: str, message: str) -> None:
    """Count an error answer by its code; keep it among the dashboard's recent errors."""
    reason = _reason(code or "unknown")
    REJECTIONS.labels(endpoint, reason).inc()
    live.error(
        {"at": time.time(), "endpoint": endpoint, "model": model or UNKNOWN, "status": status, "code": reason, "message": message[:200]}
    )


def record_ttft(*, model: str, seconds: float) -> None:
    TTFT.labels(model).observe(seconds)
    live.ttft(seconds)


def record_completion(*, endpoint: str, model: str, project: str, seconds: float, usage: dict[str, int] | None) -> None:
    """A forwarded request ended: its end-to-end latency and token counts."""
    LATENCY.labels(endpoint, model).observe(seconds)
    if usage:
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        if prompt:
            TOKENS.labels(model, project, "prompt").inc(prompt)
        if completion:
            TOKENS.labels(model, project, "completion").inc(completion)
        live.add(prompt=prompt, completion=completion)


def record_admission_wait(*, model: str, seconds: float) -> None:
    ADMISSION_WAIT.labels(model).observe(seconds)


def record_retry(*, model: str, reason: str) -> None:
    """A node failed before the first byte and the request moves to another node."""
    RETRIES.labels(model, reason).inc()


def record_stream_failure(*, model: str, reason: str, endpoint: str) -> None:
    STREAM_FAILURES.labels(model, reason).inc()
    live.error(
        {"at": time.time(), "endpoint": endpoint, "model": model, "status": 200, "code": reason, "message": "stream ended with an error event"}
    )
    live.add(errors=1)


def record_overhead(*, endpoint: str, seconds: float) -> None:
    OVERHEAD.labels(endpoint).observe(seconds)


def record_realtime_message(kind: str) -> None:
    REALTIME_MESSAGES.labels(kind).inc()


# --- state read at scrape time ---------------------------------------------------------------


class GatewayCollector(Collector):
    """This gateway process's in-flight requests, admission queues and open realtime sockets."""

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("axs_gateway_inflight", "Requests this gateway process is serving now."),
            GaugeMetricFamily("axs_gateway_draining", "1 while this gateway process shuts down."),
            GaugeMetricFamily("axs_admission_queue_depth", "Requests waiting in this gateway's admission queue.", labels=["model"]),
            GaugeMetricFamily("axs_admission_active", "Requests admitted (holding a slot) in this gateway.", labels=["model"]),
            GaugeMetricFamily("axs_realtime_sockets", "Open WebSocket inference connections."),
        ]

    def collect(self) -> Iterable[Metric]:
        from axserving.lifecycle import gateway
        from inference import admission

        inflight, draining, depth, active, sockets = self._families()
        inflight.add_metric([], max(gateway.inflight, 0))
        draining.add_metric([], 1 if gateway.draining else 0)
        # admission.py keeps its gates private; reading them here costs the hot path nothing.
        for model, gate in list(admission._gates.items()):
            depth.add_metric([model], len(gate.waiters))
            active.add_metric([model], gate.active)
        sockets.add_metric([], realtime_sockets.count)
        return [inflight, draining, depth, active, sockets]


class _SocketCount:
    count = 0


realtime_sockets = _SocketCount()


def _register(collector: Collector) -> None:
    try:
        REGISTRY.register(collector)
    except ValueError:  # already registered (module reloaded in tests)
        pass


_register(GatewayCollector())


# --- the same figures as JSON (/v1/metrics) --------------------------------------------------


def _samples(metric: Any, suffix: str) -> list[tuple[dict[str, str], float]]:
    name = metric._name + suffix
    return [(s.labels, s.value) for family in metric.collect() for s in family.samples if s.name == name]


def _sum_by(metric: Any, label: str, suffix: str = "_total") -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in _samples(metric, suffix):
        out[labels[label]] = out.get(labels[label], 0.0) + value
    return out


def _quantile(buckets: list[tuple[float, float]], count: float, q: float) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) pairs."""
    if count <= 0:
        return None
    rank = q * count
    lower, below = 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if upper == float("inf"):
                return lower
            inside = cumulative - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = upper, cumulative
    return lower


def histogram_summary(metric: Any, scale: float = 1000.0) -> dict[str, float | int | None]:
    """Count, mean, p50 and p95 of a histogram summed over its labels (in ms by default)."""
    buckets: dict[float, float] = {}
    for labels, value in _samples(metric, "_bucket"):
        le = float(labels["le"])
        buckets[le] = buckets.get(le, 0.0) + value
    count = sum(v for _, v in _samples(metric, "_count"))
    total = sum(v for _, v in _samples(metric, "_sum"))
    ordered = sorted(buckets.items())

    def q(x: float) -> float | None:
        value = _quantile(ordered, count, x)
        return round(value * scale, 3) if value is not None else None

    return {"count": int(count), "mean": round(total / count * scale, 3) if count else None, "p50": q(0.5), "p95": q(0.95)}


def snapshot() -> dict[str, Any]:
    """This process's serving figures: requests, tokens, latencies (ms), admission, rejections, retries."""
    from axserving.lifecycle import gateway
    from inference import admission

    by_status = _sum_by(REQUESTS, "status")
    tokens = _sum_by(TOKENS, "kind")
    return {
        "requests": {
            "total": int(sum(by_status.values())),
            "by_status": {k: int(v) for k, v in sorted(by_status.items())},
            "by_model": {k: int(v) for k, v in sorted(_sum_by(REQUESTS, "model").items())},
            "by_endpoint": {k: int(v) for k, v in sorted(_sum_by(REQUESTS, "endpoint").items())},
        },
        "tokens": {"prompt": int(tokens.get("prompt", 0)), "completion": int(tokens.get("completion", 0))},
        "ttft_ms": histogram_summary(TTFT),
        "latency_ms": histogram_summary(LATENCY),
        "gateway_overhead_ms": histogram_summary(OVERHEAD),
        "admission": {
            "queue_depth": admission.queue_depth(),
            "wait_ms": histogram_summary(ADMISSION_WAIT),
        },
        "rejections": {k: int(v) for k, v in sorted(_sum_by(REJECTIONS, "reason").items())},
        "retries": {k: int(v) for k, v in sorted(_sum_by(RETRIES, "reason").items())},
        "stream_failures": {k: int(v) for k, v in sorted(_sum_by(STREAM_FAILURES, "reason").items())},
        "inflight": max(gateway.inflight, 0),
        "draining": gateway.draining,
        "realtime_sockets": realtime_sockets.count,
    }
