"""Cross-process invalidation of the gateways' key and policy caches through one Redis counter.

Every committed change to keys, projects or policies increments `axs:gov:version`. A gateway
reads the counter inside its per-request quota script (no extra round trip) and drops its caches
when it moved, so a revoked key or a changed policy is seen by every gateway on its next request.
Without Redis, caches expire after AXS_KEY_CACHE_SECONDS instead.
"""

import logging

import redis
from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)

VERSION_KEY = "axs:gov:version"


def publish_change() -> None:
    """Increment the governance version in Redis (network) and drop this process's caches."""
    from . import selectors

    selectors.forget_cached_keys()
    if not settings.REDIS_URL:
        return
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
        try:
            client.incr(VERSION_KEY)
        finally:
            client.close()
    except (redis.RedisError, OSError):
        logger.warning("Could not publish a governance change; gateways see it within the cache TTL", exc_info=True)


def publish_on_commit() -> None:
    """Publish the change once the caller's transaction commits (a rolled-back change publishes nothing)."""
    transaction.on_commit(publish_change)
