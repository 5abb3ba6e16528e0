"""Where a model can go: free memory (from heartbeats) and each node's own limits."""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from fleet.models import Node

from . import gguf_info
from .errors import NoNodeFits
from .models import Deployment, RegisteredModel

_HOLDING = [Deployment.State.PENDING, Deployment.State.LOADING, Deployment.State.READY]


def estimate(model: RegisteredModel) -> int:
    return gguf_info.estimate_memory(
        size_bytes=model.file.size_bytes, metadata=model.file.metadata, n_ctx=model.n_ctx, embeddings=model.embeddings
    )


def why_not(node: Node, model: RegisteredModel) -> str | None:
    """The reason `model` cannot go on `node`, or None when it fits."""
    if node.last_heartbeat < timezone.now() - timedelta(seconds=settings.AXS_NODE_TTL) or node.status != Node.Status.READY:
        return "not ready (offline, starting or draining)"
    if node.drain_requested:
        return "drained"
    held = Deployment.objects.filter(node=node, state__in=_HOLDING).exclude(model=model).select_related("model__file")
    max_models = int(node.telemetry.get("max_models") or 0)
    if max_models and held.count() >= max_models:
        return f"holds {held.count()} model(s), its limit is {max_models}"
    need = estimate(model)
    budget = int(node.telemetry.get("memory_budget_bytes") or 0)
    if budget:
        used = sum(estimate(d.model) for d in held)
        if used + need > budget:
            return f"needs {need / 2**20:.0f} MiB, its budget has {(budget - used) / 2**20:.0f} MiB left"
    free = int(node.telemetry.get("free_memory_bytes") or 0)
    if free and need > free:
        return f"needs {need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free"
    return None


def check_node_fits(*, node: Node, model: RegisteredModel) -> None:
    reason = why_not(node, model)
    if reason:
        raise NoNodeFits(f"'{model.name}' cannot go on {node.name}: {reason}.", param="node")


def pick_node(*, model: RegisteredModel) -> Node:
    """The fitting node with the most free memory; 409 naming each node's reason when none fits."""
    reasons: dict[str, str] = {}
    fitting: list[Node] = []
    for node in Node.objects.exclude(status=Node.Status.OFFLINE).order_by("name"):
        reason = why_not(node, model)
        if Deployment.objects.filter(node=node, model=model, state__in=_HOLDING).exists():
            reason = reason or "already holds it"
        if reason:
            reasons[node.name] = reason
        else:
            fitting.append(node)
    if not fitting:
        detail = "; ".join(f"{n}: {r}" for n, r in reasons.items()) or "no node is registered"
        raise NoNodeFits(f"No node can take '{model.name}' ({detail}).", param="node")
    return max(fitting, key=lambda n: int(n.telemetry.get("free_memory_bytes") or 0))
