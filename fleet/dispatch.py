"""The gateway's view of the fleet: a routing table refreshed in the background, and node choice."""

import asyncio
import itertools
import logging
import time

from asgiref.sync import sync_to_async
from django.conf import settings

from axserving.errors import NotFound, ServiceUnavailable

from .selectors import ModelView, Route, RoutingTable, build_routing_table

logger = logging.getLogger(__name__)

_table: RoutingTable | None = None
_refreshing: asyncio.Task[RoutingTable] | None = None
_round_robin = itertools.count()


async def _refresh() -> RoutingTable:
    global _table
    _table = await sync_to_async(build_routing_table, thread_sensitive=False)()
    return _table


async def aget_routing_table(*, max_age: float | None = None) -> RoutingTable:
    """The cached table; a stale one is served while one refresh runs (at most one query a period)."""
    global _refreshing
    max_age = settings.AXS_ROUTING_REFRESH if max_age is None else max_age
    table = _table
    if table is not None and time.monotonic() - table.built_at < max_age:
        return table
    if _refreshing is None or _refreshing.done() or _refreshing.get_loop() is not asyncio.get_running_loop():
        _refreshing = asyncio.ensure_future(_refresh())
    if table is None or max_age == 0:
        return await asyncio.shield(_refreshing)
    return table


def resolve_model(table: RoutingTable, name: str) -> ModelView:
    """The model a request names, or 404 in the OpenAI envelope."""
    view = table.find(name)
    if view is None:
        raise NotFound(f"The model '{name}' does not exist.", param="model", code="model_not_found")
    return view


def pick_route(view: ModelView, *, exclude: frozenset[str] = frozenset()) -> Route:
    """Least in-flight ready node for the model, round-robin among equals; 503 when none."""
    candidates = [route for route in view.routes if route.node not in exclude]
    if not candidates:
        raise ServiceUnavailable(
            f"No node is ready to serve '{view.name}' right now.", code="model_not_ready", headers={"Retry-After": "5"}
        )
    least = min(route.inflight for route in candidates)
    best = [route for route in candidates if route.inflight == least]
    return best[next(_round_robin) % len(best)]
