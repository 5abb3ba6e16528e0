import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from models_registry.models import Deployment, RegisteredModel

from .errors import NodeNotFound
from .models import Node


@dataclass(frozen=True, slots=True)
class Route:
    """A node that can take a request for a model, with the figures policies decide on."""

    node: str
    address: str
    inflight: int = 0
    slots: int = 1
    queued: int = 0
    ttft_p95_ms: float = 0.0
    error_rate: float = 0.0
    age: float = 0.0  # seconds since the telemetry was taken
    ready_since: float = 0.0  # epoch seconds the model became ready on this node


@dataclass(frozen=True, slots=True)
class ModelView:
    name: str
    aliases: tuple[str, ...]
    created: int
    n_ctx: int
    routes: tuple[Route, ...]


@dataclass(slots=True)
class RoutingTable:
    """What a gateway needs to route, built from the registry in one pass."""

    models: dict[str, ModelView] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # id or alias -> id
    built_at: float = 0.0

    def find(self, name: str) -> ModelView | None:
        canonical = self.names.get(name)
        return self.models[canonical] if canonical else None

    @property
    def servable(self) -> list[str]:
        return [name for name, view in self.models.items() if view.routes]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A routable deployment as read from Postgres, before Redis telemetry is applied."""

    model_id: int
    node: str
    address: str
    slots: int
    inflight: int
    queued: int
    telemetry: dict[str, Any]
    heartbeat: datetime
    ready_since: datetime


def list_routable() -> tuple[list[RegisteredModel], list[Candidate]]:
    """Models and the deployments that may take traffic: node ready, not drained, heartbeat fresh, model ready."""
    fresh_since = timezone.now() - timedelta(seconds=settings.AXS_NODE_TTL)
    ready = Deployment.objects.filter(
        state=Deployment.State.READY,
        node__status=Node.Status.READY,
        node__drain_requested=False,
        node__last_heartbeat__gte=fresh_since,
    ).select_related("node")
    candidates = [
        Candidate(
            model_id=d.model_id,
            node=d.node.name,
            address=d.node.address,
            slots=d.node.slots,
            inflight=d.node.inflight,
            queued=d.node.queued,
            telemetry=d.node.telemetry,
            heartbeat=d.node.last_heartbeat,
            ready_since=d.updated_at,
        )
        for d in ready.order_by("node__name")
    ]
    return list(RegisteredModel.objects.order_by("name")), candidates


def build_routing_table(
    models: list[RegisteredModel],
    candidates: list[Candidate],
    telemetry: dict[str, dict[str, Any]] | None = None,
    ejected: set[str] | None = None,
    own: Mapping[str, int] | None = None,
) -> RoutingTable:
    """Join topology (Postgres) with hot telemetry and ejections (Redis) into a routing table.

    `own` is the building gateway's in-flight count per node: it is taken out of each route's
    heartbeat load, so a route carries only the rest (other gateways' requests) and dispatch adds
    its own exact count back at pick time. A heartbeat up to a few seconds old would otherwise
    make a node that has just freed its slots look full.
    """
    telemetry, ejected, own = telemetry or {}, ejected or set(), own or {}
    now = time.time()
    routes: dict[int, list[Route]] = {}
    for c in candidates:
        if c.node in ejected:
            continue
        t = telemetry.get(c.node) or c.telemetry
        taken = float(t.get("at", c.heartbeat.timestamp()))
        slots = int(t.get("slots", c.slots)) or 1
        others = max(int(t.get("inflight", c.inflight)) + int(t.get("queued", c.queued)) - own.get(c.node, 0), 0)
        routes.setdefault(c.model_id, []).append(
            Route(
                node=c.node,
                address=c.address,
                inflight=min(others, slots),
                slots=slots,
                queued=others - min(others, slots),
                ttft_p95_ms=float(t.get("ttft_p95_ms", 0.0)),
                error_rate=float(t.get("error_rate", 0.0)),
                age=max(now - taken, 0.0),
                ready_since=c.ready_since.timestamp(),
            )
        )
    table = RoutingTable(built_at=time.monotonic())
    for model in models:
        table.models[model.name] = ModelView(
            name=model.name,
            aliases=tuple(model.aliases),
            created=int(model.created_at.timestamp()),
            n_ctx=model.n_ctx,
            routes=tuple(routes.get(model.pk, ())),
        )
        for alias in model.aliases:
            table.names.setdefault(alias, model.name)
        table.names[model.name] = model.name
    return table


def node_state(node: Node, *, now: datetime | None = None) -> str:
    """What an operator sees: ready, draining, drained, unhealthy, offline or starting."""
    age = ((now or timezone.now()) - node.last_heartbeat).total_seconds()
    if node.status == Node.Status.OFFLINE or age > settings.AXS_NODE_OFFLINE_AFTER:
        return "offline"
    if age > settings.AXS_NODE_TTL:
        return "unhealthy"
    if node.drain_requested or node.status == Node.Status.DRAINING:
        return "drained" if node.inflight == 0 else "draining"
    return str(node.status)


def list_nodes() -> QuerySet[Node]:
    return Node.objects.prefetch_related("deployments__model").order_by("name")


def get_node(*, node_id: int) -> Node:
    node = list_nodes().filter(pk=node_id).first()
    if node is None:
        raise NodeNotFound(param="id")
    return node
