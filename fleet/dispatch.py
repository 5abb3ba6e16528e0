"""The gateway's view of the fleet: a routing table refreshed in the background, and node choice.

Topology comes from Postgres and load/ejections from Redis, so every gateway process sees the
same fleet; the per-process parts are only this process's own in-flight counts (fresher than
any heartbeat) and the failure streaks that lead to an ejection (which is then shared).
"""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence

import redis
from asgiref.sync import sync_to_async
from django.conf import settings

from axserving.errors import ServiceUnavailable
from models_registry.errors import ModelNotFound

from . import hot, policies
from .selectors import ModelView, Route, RoutingTable, build_routing_table, list_routable

logger = logging.getLogger(__name__)

_table: RoutingTable | None = None
_refreshing: asyncio.Future[RoutingTable] | None = None
_keeper: asyncio.Task[None] | None = None
_states: dict[str, policies.PolicyState] = {}
_local_inflight: Counter[str] = Counter()
_failures: Counter[str] = Counter()
_ejected_until: dict[str, float] = {}


async def _refresh() -> RoutingTable:
    global _table
    models, candidates = await sync_to_async(list_routable, thread_sensitive=False)()
    names = sorted({c.node for c in candidates})
    try:
        telemetry, ejected = await hot.aread(names)
    except (redis.RedisError, OSError):
        logger.warning("Routing without Redis telemetry", exc_info=True)
        telemetry, ejected = {}, set()
    _table = build_routing_table(models, candidates, telemetry, ejected, own=_local_inflight)
    return _table


async def _keep_fresh() -> None:
    """Rebuild the table every AXS_ROUTING_REFRESH seconds, so even an idle gateway routes on fresh data."""
    while True:
        await asyncio.sleep(settings.AXS_ROUTING_REFRESH)
        try:
            await _refresh()
        except Exception:
            logger.warning("Routing table refresh failed; keeping the last one", exc_info=True)


async def aget_routing_table(*, max_age: float | None = None, wait: bool = False) -> RoutingTable:
    """The cached table, kept fresh in the background; `wait` (or no table yet) awaits a rebuild."""
    global _refreshing, _keeper
    loop = asyncio.get_running_loop()
    if _keeper is None or _keeper.done() or _keeper.get_loop() is not loop:
        _keeper = loop.create_task(_keep_fresh())
    max_age = settings.AXS_ROUTING_REFRESH * 2 if max_age is None else max_age
    table = _table
    if table is not None and time.monotonic() - table.built_at < max_age:
        return table
    if _refreshing is None or _refreshing.done() or _refreshing.get_loop() is not loop:
        _refreshing = asyncio.ensure_future(_refresh())
    if table is None or wait:
        return await asyncio.shield(_refreshing)
    return table


# A request for a model the cached table cannot serve waits for a table at most this old, so a
# node that just became ready is used at once; concurrent misses share one registry read.
MISS_MAX_AGE = 0.05


async def aget_model_view(name: str) -> ModelView:
    """The model's routes, re-reading the registry when the cached table cannot serve it."""
    view = (await aget_routing_table()).find(name)
    if view is None or not view.routes:
        view = resolve_model(await aget_routing_table(max_age=MISS_MAX_AGE, wait=True), name)
    return view


def resolve_model(table: RoutingTable, name: str) -> ModelView:
    """The model a request names, or 404 in the OpenAI envelope."""
    view = table.find(name)
    if view is None:
        raise ModelNotFound(f"The model '{name}' does not exist.", param="model")
    return view


def no_node(view: ModelView) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"No node is ready to serve '{view.name}' right now.", code="model_not_ready", headers={"Retry-After": "5"}
    )


def pick_route(view: ModelView, *, exclude: frozenset[str] = frozenset(), affinity_key: str = "") -> Route:
    """Hard filters (ready, not drained, not ejected, not already tried), then the configured policy; 503 when none."""
    routes: Sequence[Route] = view.routes
    if _ejected_until:
        now = time.monotonic()
        for node in [node for node, until in _ejected_until.items() if until <= now]:
            del _ejected_until[node]
    if exclude or _ejected_until:
        routes = [r for r in routes if r.node not in exclude and r.node not in _ejected_until]
    if not routes:
        raise no_node(view)
    policy = policy_for(view.name)
    state = _states.setdefault(view.name, policies.PolicyState())
    return policies.choose(policy, routes, state, affinity_key=affinity_key, ttl=settings.AXS_NODE_TTL, local=_local_inflight)


def policy_for(model: str) -> str:
    return str(settings.AXS_DISPATCH_POLICY_BY_MODEL.get(model, settings.AXS_DISPATCH_POLICY))


def started(node: str) -> None:
    _local_inflight[node] += 1


def finished(node: str, *, ok: bool) -> None:
    """Count the request out; the Nth consecutive failure ejects the node from every gateway for a cool-down."""
    _local_inflight[node] -= 1
    if ok:
        _failures.pop(node, None)
        return
    _failures[node] += 1
    if _failures[node] >= settings.AXS_EJECT_AFTER_FAILURES:
        # The streak is kept: after the cool-down one request probes the node, and a failure ejects it again.
        seconds = settings.AXS_EJECT_SECONDS
        _ejected_until[node] = time.monotonic() + seconds
        logger.warning("Ejecting node %s for %.0fs after %d failures", node, seconds, _failures[node], extra={"node": node})
        task = asyncio.ensure_future(_share_ejection(node, seconds))
        _background.add(task)
        task.add_done_callback(_background.discard)


_background: set[asyncio.Future[None]] = set()


async def _share_ejection(node: str, seconds: float) -> None:
    try:
        await hot.aeject(node, seconds=seconds)
    except (redis.RedisError, OSError):
        logger.warning("Could not share the ejection of %s", node, extra={"node": node})
