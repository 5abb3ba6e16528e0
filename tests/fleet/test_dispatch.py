from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from axserving.errors import NotFound, ServiceUnavailable
from fleet import dispatch
from fleet.models import Node
from fleet.selectors import ModelView, Route, build_routing_table
from models_registry.models import Deployment, ModelFile, RegisteredModel

pytestmark = pytest.mark.django_db


def make_model(name: str = "m", aliases: list[str] | None = None) -> RegisteredModel:
    model_file = ModelFile.objects.create(sha256=name.ljust(64, "0"), path=f"/models/{name}.gguf", size_bytes=1, mtime=0)
    return RegisteredModel.objects.create(name=name, aliases=aliases or [], file=model_file)


def make_node(name: str, *, status: str = Node.Status.READY, age: float = 0, inflight: int = 0) -> Node:
    seen = timezone.now() - timedelta(seconds=age)
    return Node.objects.create(name=name, address=f"http://{name}:9000", status=status, started_at=seen, last_heartbeat=seen, inflight=inflight)


def deploy(model: RegisteredModel, node: Node, state: str = Deployment.State.READY) -> None:
    Deployment.objects.create(model=model, node=node, state=state, updated_at=timezone.now())


def test_routing_table_keeps_only_fresh_ready_nodes_with_ready_models(settings):
    settings.AXS_NODE_TTL = 15
    model = make_model("m", ["alias"])
    deploy(model, make_node("good"))
    deploy(model, make_node("stale", age=60))
    deploy(model, make_node("draining", status=Node.Status.DRAINING))
    deploy(model, make_node("loading"), state=Deployment.State.LOADING)

    table = build_routing_table()

    assert [r.node for r in table.find("m").routes] == ["good"]
    assert table.find("alias").name == "m"
    assert table.servable == ["m"]


def test_model_without_ready_node_is_listed_but_not_servable():
    make_model("idle")

    table = build_routing_table()

    assert table.find("idle").routes == ()
    assert table.servable == []


def view(*routes: Route) -> ModelView:
    return ModelView(name="m", aliases=(), created=0, n_ctx=2048, routes=routes)


def test_pick_route_prefers_least_inflight_and_honours_exclusions():
    busy, idle = Route("busy", "http://a", 5), Route("idle", "http://b", 0)

    assert dispatch.pick_route(view(busy, idle)).node == "idle"
    assert dispatch.pick_route(view(busy, idle), exclude=frozenset({"idle"})).node == "busy"


def test_pick_route_without_nodes_is_503_with_retry_after():
    with pytest.raises(ServiceUnavailable) as err:
        dispatch.pick_route(view())

    assert err.value.status == 503
    assert err.value.headers["Retry-After"]


def test_resolve_unknown_model_is_404():
    table = build_routing_table()

    with pytest.raises(NotFound) as err:
        dispatch.resolve_model(table, "nope")

    assert err.value.param == "model"
