"""Lifecycle tasks. load/unload/reload go to a node's own queue (`node.<name>`) and run inside
that node's process, where the model must land; evict_idle_models runs on the default queue."""

from axserving.celery import app

from . import services


class TransientLoadError(Exception):
    """A load that may succeed if tried again (the node was busy starting up)."""


@app.task(acks_late=True, autoretry_for=(TransientLoadError,), retry_backoff=True, max_retries=5)
def load_model(*, deployment_id: int) -> None:
    """Load the deployment's model into this node process; READY or FAILED (DB, audit). Idempotent."""
    from inference.node import lifecycle

    lifecycle.load_deployment(deployment_id=deployment_id)


@app.task(acks_late=True, autoretry_for=(TransientLoadError,), retry_backoff=True, max_retries=5)
def unload_model(*, deployment_id: int) -> None:
    """Unload after in-flight requests finish; UNLOADED (DB, audit). Idempotent."""
    from inference.node import lifecycle

    lifecycle.unload_deployment(deployment_id=deployment_id)


@app.task(acks_late=True, autoretry_for=(TransientLoadError,), retry_backoff=True, max_retries=5)
def reload_model(*, deployment_id: int) -> None:
    """Load a fresh instance and swap it in; the old one serves until then (DB, audit)."""
    from inference.node import lifecycle

    lifecycle.reload_deployment(deployment_id=deployment_id)


@app.task
def evict_idle_models() -> int:
    """Unload models idle past their TTL, pinned ones excepted (DB, audit, tasks)."""
    return services.evict_idle_models()
