from collections.abc import Iterator

import pytest
import redis
from django.conf import settings

from axserving.access import quotas, selectors


@pytest.fixture
def clean_redis() -> Iterator[redis.Redis]:
    """The test Redis without any governance keys, and this process's caches empty."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    for name in client.scan_iter("axs:*"):
        client.delete(name)
    selectors.forget_cached_keys()
    quotas._State.seen_version = None
    quotas._State.down_until = 0.0
    yield client
    client.close()
