from celery import shared_task

from . import services


@shared_task
def sweep_nodes() -> int:
    """Mark nodes whose heartbeats stopped offline (DB, audit)."""
    return services.sweep_nodes()
