"""Quota admission against the real test Redis (and its per-process fallback)."""

import pytest

from axserving.access import quotas
from axserving.access.selectors import KeyInfo, Limits

pytestmark = pytest.mark.usefixtures("clean_redis")


def _key(key_limits: Limits = Limits(), project_limits: Limits = Limits(), key_id: int = 1) -> KeyInfo:
    return KeyInfo(id=key_id, name="k", scopes=frozenset({"inference"}), project_id=7, project_name="p", key_limits=key_limits, project_limits=project_limits)


async def _admit(key: KeyInfo, slot: str) -> quotas.Admission:
    admission = await quotas.areserve(key=key, request_id=slot)
    if admission.stale:  # the first call of a process learns the governance version
        admission = await quotas.areserve(key=key, request_id=slot)
    return admission


async def test_it_admits_exactly_the_requests_per_minute_then_names_the_limit():
    key = _key(Limits(requests_per_minute=3))

    results = [await _admit(key, f"r{i}") for i in range(5)]

    assert [r.denial for r in results[:3]] == [None, None, None]
    denied = results[3].denial
    assert (denied.scope, denied.limit) == ("key", "requests_per_minute")
    assert 55 <= denied.retry_after <= 60
    assert results[4].denial is not None


async def test_it_counts_the_project_across_its_keys():
    first, second = _key(project_limits=Limits(requests_per_minute=2), key_id=1), _key(project_limits=Limits(requests_per_minute=2), key_id=2)

    outcomes = [(await _admit(first, "a")).denial, (await _admit(second, "b")).denial, (await _admit(first, "c")).denial]

    assert outcomes[:2] == [None, None]
    assert (outcomes[2].scope, outcomes[2].limit) == ("project", "requests_per_minute")


async def test_it_refuses_once_settled_tokens_reach_the_minute_and_day_limits():
    per_minute = _key(Limits(tokens_per_minute=100), key_id=1)
    per_day = _key(Limits(tokens_per_day=50), key_id=2)

    assert (await _admit(per_minute, "a")).denial is None
    await quotas.asettle(key=per_minute, request_id="a", tokens=100)
    assert (await _admit(per_day, "b")).denial is None
    await quotas.asettle(key=per_day, request_id="b", tokens=60)

    assert (await _admit(per_minute, "c")).denial.limit == "tokens_per_minute"
    day = (await _admit(per_day, "d")).denial
    assert day.limit == "tokens_per_day"
    assert 1 <= day.retry_after <= 86400


async def test_it_frees_a_concurrency_slot_when_the_request_settles():
    key = _key(Limits(max_concurrent=1))

    assert (await _admit(key, "a")).denial is None
    assert (await _admit(key, "b")).denial.limit == "max_concurrent"
    await quotas.asettle(key=key, request_id="a", tokens=0)

    assert (await _admit(key, "c")).denial is None


async def test_it_reports_stale_caches_without_counting_when_the_governance_version_moves(clean_redis):
    from axserving.access.invalidation import publish_change

    key = _key(Limits(requests_per_minute=1))
    assert (await quotas.areserve(key=key, request_id="x")).stale  # first sight of the version
    publish_change()

    moved = await quotas.areserve(key=key, request_id="y")
    admitted = await quotas.areserve(key=key, request_id="z")

    assert moved.stale
    assert admitted.denial is None and not admitted.stale  # the stale call counted nothing


async def test_it_falls_back_to_local_limits_when_redis_is_unreachable(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    quotas._State.clients = {}
    key = _key(Limits(requests_per_minute=2), key_id=99)
    quotas._local.requests.clear()

    results = [await quotas.areserve(key=key, request_id=f"r{i}") for i in range(3)]

    assert [r.backend for r in results] == ["local"] * 3
    assert [r.denial is None for r in results] == [True, True, False]
    assert quotas.redis_degraded()


async def test_health_reports_redis_unreachable_while_quotas_run_locally(settings):
    from fleet import health

    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    quotas._State.clients = {}

    admission = await quotas.areserve(key=_key(Limits(requests_per_minute=5), key_id=98), request_id="x")

    assert (admission.backend, admission.denial) == ("local", None)
    assert quotas.redis_degraded()
    assert await health._redis_ok() == "unreachable"  # what turns /health's status to "degraded"
