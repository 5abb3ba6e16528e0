"""The two buffered writers of a gateway process: rejected-request audit events and the usage log."""

import functools

from django.conf import settings

from . import services
from .buffer import BatchWriter


@functools.cache
def audit_writer() -> BatchWriter:
    return BatchWriter(
        "audit",
        lambda items: services.record_events(events=items),
        interval=settings.AXS_LOG_FLUSH_SECONDS,
        max_items=settings.AXS_LOG_SPOOL_MAX,
    )


@functools.cache
def usage_writer() -> BatchWriter:
    return BatchWriter(
        "usage",
        lambda items: services.record_usage(records=items),
        interval=settings.AXS_LOG_FLUSH_SECONDS,
        max_items=settings.AXS_LOG_SPOOL_MAX,
    )


def flush_now() -> None:
    """Write both buffers (DB) now; for tests and the management commands."""
    audit_writer().flush()
    usage_writer().flush()
