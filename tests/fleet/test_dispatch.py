from datetime import timedelta

from unittest.mock import patch

import pytest
from django.utils import timezone

from axserving.errors import NotFound, ServiceUnavailable
from fleet import dispatch
from fleet.models import Node
from fleet.selectors import ModelView, Route, build_routing_table, list_routable, node_state
from models_registry.models import Deployment, ModelFile, RegisteredModel

pytestmark = pytest.mark.django_db


def make_model(name: str = "m", aliases: list[str] | None = None) -> RegisteredModel:
    model_file = ModelFile.objects.create(sha256=name.ljust(64, "0"), path=f"/models/{name}.gguf", size_bytes=1, mtime=0)
    return RegisteredModel.objects.create(name=name, aliases=aliases or [], file=model_file)


def make_node(name: str, *, status: str = Node.Status.READY, age: float = 0, inflight: int = 0, drain: bool = False) -> Node:
    seen = timezone.now() - timedelta(seconds=age)
    return Node.objects.create(
        name=name, address=f"http://{name}:9000", status=status, started_at=seen, last_heartbeat=seen, inflight=inflight,
        drain_requested=drain,
    )


def deploy(model: RegisteredModel, node: Node, state: str = Deployment.State.READY) -> None:
    Deployment.objects.create(model=model, node=node, state=state, updated_at=timezone.now())


def table():
    return build_routing_table(*list_routable())


def test_routing_table_keeps_only_fresh_ready_undrained_nodes_with_ready_models(settings):
    settings.AXS_NODE_TTL = 6
    model = make_model("m", ["alias"])
    deploy(model, make_node("good"))
    deploy(model, make_node("stale", age=60))
    deploy(model, make_node("draining", status=Node.Status.DRAINING))
    deploy(model, make_node("drained-by-operator", drain=True))
    deploy(model, make_node("loading"), state=Deployment.State.LOADING)

    t = table()

    assert [r.node for r in t.find("m").routes] == ["good"]
    assert t.find("alias").name == "m"
    assert t.servable == ["m"]


def test_redis_telemetry_overrides_the_row_and_ejected_nodes_drop_out():
    model = make_model("m")
    deploy(model, make_node("a", inflight=0))
    deploy(model, make_node("b"))
    models, candidates = list_routable()

    t = build_routing_table(models, candidates, {"a": {"inflight": 7, "slots": 8, "at": 0}}, {"b"})

    (route,) = t.find("m").routes
    assert (route.node, route.inflight, route.slots) == ("a", 7, 8)


def test_a_heartbeat_older_than_this_gateways_finished_requests_does_not_make_a_node_look_full(settings):
    settings.AXS_DISPATCH_POLICY = "least_inflight"
    model = make_model("m")
    deploy(model, make_node("a"))
    deploy(model, make_node("b"))
    models, candidates = list_routable()
    # Both heartbeats say 4 of 4 slots busy; 3 of a's and 4 of b's are this gateway's own requests.
    beats = {"a": {"inflight": 4, "slots": 4, "at": 0}, "b": {"inflight": 4, "slots": 4, "at": 0}}
    t = build_routing_table(models, candidates, beats, own={"a": 3, "b": 4})
    assert {r.node: r.inflight for r in t.find("m").routes} == {"a": 1, "b": 0}

    # Since then, two of a's requests finished here: a has room, b is still full.
    with patch.dict(dispatch._local_inflight, {"a": 1, "b": 4}):
        picks = {dispatch.pick_route(t.find("m")).node for _ in range(4)}

    assert picks == {"a"}


def test_model_without_ready_node_is_listed_but_not_servable():
    make_model("idle")

    t = table()

    assert t.find("idle").routes == ()
    assert t.servable == []


@pytest.mark.parametrize(
    ("age", "status", "drain", "inflight", "state"),
    [
        (0, Node.Status.READY, False, 0, "ready"),
        (10, Node.Status.READY, False, 0, "unhealthy"),
        (60, Node.Status.READY, False, 0, "offline"),
        (0, Node.Status.READY, True, 2, "draining"),
        (0, Node.Status.READY, True, 0, "drained"),
        (0, Node.Status.OFFLINE, False, 0, "offline"),
    ],
)
def test_node_state_follows_heartbeat_age_and_drain(settings, age, status, drain, inflight, state):
    settings.AXS_NODE_TTL, settings.AXS_NODE_OFFLINE_AFTER = 6, 20

    node = make_node("n", age=age, status=status, drain=drain, inflight=inflight)

    assert node_state(node) == state


def view(*routes: Route) -> ModelView:
    return ModelView(name="m", aliases=(), created=0, n_ctx=2048, routes=routes)


def test_pick_route_prefers_least_inflight_and_honours_exclusions(settings):
    settings.AXS_DISPATCH_POLICY = "least_inflight"
    busy, idle = Route("busy", "http://a", inflight=5), Route("idle", "http://b", inflight=0)

    assert dispatch.pick_route(view(busy, idle)).node == "idle"
    assert dispatch.pick_route(view(busy, idle), exclude=frozenset({"idle"})).node == "busy"


def test_pick_route_without_nodes_is_503_with_retry_after():
    with pytest.raises(ServiceUnavailable) as err:
        dispatch.pick_route(view())

    assert err.value.status == 503
    assert err.value.headers["Retry-After"]


def test_repeated_failures_eject_a_node_until_the_cool_down(settings):
    settings.AXS_EJECT_AFTER_FAILURES, settings.AXS_EJECT_SECONDS = 3, 60
    settings.REDIS_URL = ""  # this process's memory stands in for Redis
    flaky, fine = Route("flaky-node", "http://a"), Route("fine-node", "http://b", inflight=3)

    for _ in range(3):
        dispatch.started("flaky-node")
        dispatch.finished("flaky-node", ok=False)

    assert dispatch.pick_route(view(flaky, fine)).node == "fine-node"
    dispatch._ejected_until.clear()
    dispatch._failures.clear()


def test_resolve_unknown_model_is_404():
    with pytest.raises(NotFound) as err:
        dispatch.resolve_model(table(), "nope")

    assert err.value.param == "model"
