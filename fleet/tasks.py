from axserving.celery import app

from . import services


@app.task
def sweep_nodes() -> int:
    """Mark nodes whose heartbeats stopped offline and fail their unfinished deployments (DB, audit)."""
    from models_registry.services import fail_orphaned_deployments

    fail_orphaned_deployments()
    return services.sweep_nodes()
