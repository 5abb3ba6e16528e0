import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from models_registry.models import Deployment, RegisteredModel

from .models import Node


@dataclass(frozen=True, slots=True)
class Route:
    node: str
    address: str
    inflight: int


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


def build_routing_table() -> RoutingTable:
    """Read models and the deployments that may take traffic: node ready, heartbeat fresh, model ready."""
    fresh_since = timezone.now() - timedelta(seconds=settings.AXS_NODE_TTL)
    ready = (
        Deployment.objects.filter(
            state=Deployment.State.READY, node__status=Node.Status.READY, node__last_heartbeat__gte=fresh_since
        )
        .select_related("node")
        .order_by("node__name")
    )
    routes: dict[int, list[Route]] = {}
    for deployment in ready:
        node = deployment.node
        routes.setdefault(deployment.model_id, []).append(Route(node=node.name, address=node.address, inflight=node.inflight))
    table = RoutingTable(built_at=time.monotonic())
    for model in RegisteredModel.objects.order_by("name"):
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
