from django.db import transaction
from django.utils import timezone

from audit.services import record_event

from .models import Node


@transaction.atomic
def register_node(*, name: str, address: str) -> Node:
    """Create or refresh the node row as STARTING (DB, audit)."""
    now = timezone.now()
    node, created = Node.objects.select_for_update().update_or_create(
        name=name,
        defaults={"address": address, "status": Node.Status.STARTING, "started_at": now, "last_heartbeat": now},
    )
    record_event(actor=f"node:{name}", action="node.registered", target=f"node:{node.pk}", data={"address": address, "new": created})
    return node


def heartbeat_node(*, node_id: int, status: str, inflight: int, queued: int) -> None:
    """Record a heartbeat (DB): liveness, state and load."""
    Node.objects.filter(pk=node_id).update(last_heartbeat=timezone.now(), status=status, inflight=inflight, queued=queued)


@transaction.atomic
def deregister_node(*, node_id: int) -> None:
    """Mark the node OFFLINE and its deployments unloaded (DB, audit)."""
    from models_registry.models import Deployment

    node = Node.objects.select_for_update().get(pk=node_id)
    node.status = Node.Status.OFFLINE
    node.save(update_fields=["status"])
    Deployment.objects.filter(node=node).update(state=Deployment.State.UNLOADED, updated_at=timezone.now())
    record_event(actor=f"node:{node.name}", action="node.deregistered", target=f"node:{node.pk}")
