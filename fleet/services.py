from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import record_event
from models_registry import selectors as registry_selectors
from models_registry.models import Deployment, RegisteredModel

from . import events, hot
from .errors import NodeBusy, NodeNotFound
from .models import Node


def _node_for_update(node_id: int) -> Node:
    node = Node.objects.select_for_update().filter(pk=node_id).first()
    if node is None:
        raise NodeNotFound(param="id")
    return node


@transaction.atomic
def register_node(
    *, name: str, address: str, models: list[str] | None = None, slots: int = 1, actor: str | None = None
) -> tuple[Node, list[RegisteredModel]]:
    """Create or refresh the node as STARTING; the models it asked for plus those wanted on it become LOADING (DB, audit)."""
    wanted = {m.pk: m for m in (registry_selectors.get_model(name=n) for n in models or [])}
    now = timezone.now()
    node, created = Node.objects.select_for_update().update_or_create(
        name=name,
        defaults={"address": address, "status": Node.Status.STARTING, "started_at": now, "last_heartbeat": now, "slots": slots},
    )
    for deployment in Deployment.objects.filter(node=node, desired=Deployment.Desired.LOADED).select_related("model__file"):
        wanted.setdefault(deployment.model_id, deployment.model)  # a restarted node brings back what it held
    Deployment.objects.filter(node=node).exclude(model__in=list(wanted)).update(state=Deployment.State.UNLOADED, updated_at=now)
    for model in wanted.values():
        Deployment.objects.update_or_create(
            model=model,
            node=node,
            defaults={
                "desired": Deployment.Desired.LOADED, "state": Deployment.State.LOADING, "progress": 0, "error": "", "updated_at": now,
            },
        )
    record_event(
        actor=actor or f"node:{name}",
        action="node.registered",
        target=f"node:{node.pk}",
        data={"address": address, "models": sorted(m.name for m in wanted.values()), "new": created},
    )
    transaction.on_commit(lambda: events.publish_node_status(node_id=node.pk))
    return node, list(wanted.values())


@transaction.atomic
def heartbeat_node(
    *, node_id: int, status: str, telemetry: dict[str, Any], models: dict[str, dict[str, Any]] | None = None
) -> Node:
    """Record liveness, load, start-up load outcomes and last use (DB; telemetry mirrored to Redis)."""
    node = _node_for_update(node_id)
    node.status = status
    node.last_heartbeat = timezone.now()
    node.inflight = int(telemetry.get("inflight", 0))
    node.queued = int(telemetry.get("queued", 0))
    node.slots = int(telemetry.get("slots", node.slots))
    node.telemetry = telemetry
    node.save(update_fields=["status", "last_heartbeat", "inflight", "queued", "slots", "telemetry"])
    reports = models or {}
    for deployment in Deployment.objects.filter(node=node, model__name__in=list(reports)).select_related("model"):
        report = reports[deployment.model.name]
        fields: list[str] = []
        # Loads the node did at start-up finish here; lifecycle tasks record their own outcome.
        if deployment.state == Deployment.State.LOADING and report.get("state") in (Deployment.State.READY, Deployment.State.FAILED):
            deployment.state, deployment.error = report["state"], str(report.get("error", ""))
            deployment.progress = 100 if deployment.state == Deployment.State.READY else deployment.progress
            deployment.ready_at = node.last_heartbeat if deployment.state == Deployment.State.READY else deployment.ready_at
            fields += ["state", "error", "progress", "ready_at", "updated_at"]
        last_used = report.get("last_used")
        if last_used:
            used_at = datetime.fromtimestamp(float(last_used), tz=dt_timezone.utc)
            if deployment.last_used_at is None or used_at > deployment.last_used_at:
                deployment.last_used_at = used_at
                fields.append("last_used_at")
        if fields:
            deployment.updated_at = node.last_heartbeat
            deployment.save(update_fields=list(dict.fromkeys(fields + ["updated_at"])))
    transaction.on_commit(lambda: hot.put_telemetry(node.name, telemetry, ttl=settings.AXS_NODE_OFFLINE_AFTER))
    transaction.on_commit(lambda: events.publish_node_status(node_id=node.pk))
    return node


@transaction.atomic
def deregister_node(*, node_id: int) -> None:
    """Mark the node OFFLINE and its deployments unloaded (DB, audit)."""
    node = _node_for_update(node_id)
    node.status = Node.Status.OFFLINE
    node.save(update_fields=["status"])
    Deployment.objects.filter(node=node).update(state=Deployment.State.UNLOADED, updated_at=timezone.now())
    record_event(actor=f"node:{node.name}", action="node.deregistered", target=f"node:{node.pk}")
    transaction.on_commit(lambda: events.publish_node_status(node_id=node.pk))


@transaction.atomic
def drain_node(*, node_id: int, actor: str) -> Node:
    """Stop routing new requests to the node; in-flight ones finish (DB, audit)."""
    node = _node_for_update(node_id)
    if not node.drain_requested:
        node.drain_requested = True
        node.save(update_fields=["drain_requested"])
        record_event(actor=actor, action="node.drained", target=f"node:{node.pk}", data={"inflight": node.inflight})
    return node


@transaction.atomic
def undrain_node(*, node_id: int, actor: str) -> Node:
    """Route to the node again (DB, audit)."""
    node = _node_for_update(node_id)
    if node.drain_requested:
        node.drain_requested = False
        node.save(update_fields=["drain_requested"])
        record_event(actor=actor, action="node.undrained", target=f"node:{node.pk}")
    return node


@transaction.atomic
def remove_node(*, node_id: int, actor: str, force: bool = False) -> None:
    """Deregister the node and its deployments; refused while it is busy unless forced (DB, audit)."""
    node = _node_for_update(node_id)
    if node.inflight and not force and node.last_heartbeat > timezone.now() - timedelta(seconds=settings.AXS_NODE_OFFLINE_AFTER):
        raise NodeBusy()
    record_event(actor=actor, action="node.removed", target=f"node:{node.pk}", data={"name": node.name, "forced": force})
    transaction.on_commit(lambda: events.publish_node_removed(node_id=node_id))
    node.delete()


@transaction.atomic
def sweep_nodes() -> int:
    """Mark nodes whose heartbeats stopped OFFLINE (DB, audit per node); returns how many."""
    cutoff = timezone.now() - timedelta(seconds=settings.AXS_NODE_OFFLINE_AFTER)
    stale = list(Node.objects.select_for_update().filter(last_heartbeat__lt=cutoff).exclude(status=Node.Status.OFFLINE))
    for node in stale:
        node.status = Node.Status.OFFLINE
        node.save(update_fields=["status"])
        record_event(actor="system", action="node.offline", target=f"node:{node.pk}", data={"last_heartbeat": node.last_heartbeat.isoformat()})
    return len(stale)
