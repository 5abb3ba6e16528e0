import hmac

import orjson
from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from axserving.access.permissions import AdminAPIView, actor_of
from axserving.errors import ApiError, AuthenticationFailed, InvalidJson, MethodNotAllowed, invalid_from_detail

from . import health as health_checks
from . import selectors, services
from .models import Node


async def health(request: HttpRequest) -> HttpResponse:
    report = await health_checks.aget_health()
    status = 503 if report["status"] == "unavailable" else 200
    return HttpResponse(orjson.dumps(report), status=status, content_type="application/json")


def _check_node_token(request: HttpRequest) -> None:
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    token = settings.AXS_NODE_TOKEN
    if scheme.lower() != "bearer" or not token or not hmac.compare_digest(secret.encode(), token.encode()):
        raise AuthenticationFailed("The node token is required here.", code="invalid_node_token")


class NodeToken(BasePermission):
    """The fleet's node token (never an API key): only nodes and gateways call these."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        _check_node_token(request)
        return True


class WorkerOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="pk")
    name = serializers.CharField()
    address = serializers.CharField()
    state = serializers.SerializerMethodField()
    drain_requested = serializers.BooleanField()
    models = serializers.SerializerMethodField()
    inflight = serializers.IntegerField()
    queue = serializers.IntegerField(source="queued")
    capacity = serializers.IntegerField(source="slots")
    last_heartbeat = serializers.DateTimeField()
    started_at = serializers.DateTimeField()
    free_memory_bytes = serializers.SerializerMethodField()
    telemetry = serializers.JSONField()

    def get_state(self, node: Node) -> str:
        return selectors.node_state(node)

    def get_models(self, node: Node) -> list[dict[str, str]]:
        return [{"id": d.model.name, "state": d.state, "error": d.error} for d in node.deployments.all()]

    def get_free_memory_bytes(self, node: Node) -> int:
        return int(node.telemetry.get("free_memory_bytes", 0))


# The node endpoints authenticate with the node token (NodeToken above), not an API key.
NODE_AUTH = [{"NodeToken": []}]


class WorkerListView(AdminAPIView):

    @extend_schema(
        operation_id="workers_list",
        responses=inline_serializer("WorkerList", {"object": serializers.CharField(), "data": WorkerOutputSerializer(many=True)}),
    )
    def get(self, request: Request) -> Response:
        nodes = selectors.list_nodes()
        return Response({"object": "list", "data": WorkerOutputSerializer(nodes, many=True).data})


class WorkerDetailView(AdminAPIView):

    @extend_schema(operation_id="workers_retrieve", responses=WorkerOutputSerializer)
    def get(self, request: Request, node_id: int) -> Response:
        return Response(WorkerOutputSerializer(selectors.get_node(node_id=node_id)).data)

    @extend_schema(
        operation_id="workers_destroy",
        parameters=[OpenApiParameter("force", bool, description="deregister even while the node is busy")],
        responses={
            200: inline_serializer("WorkerDeleted", {"id": serializers.IntegerField(), "deleted": serializers.BooleanField()}),
            409: OpenApiResponse(description="The node is busy (requests in flight or models loaded); `?force=true` overrides."),
        },
    )
    def delete(self, request: Request, node_id: int) -> Response:
        force = request.query_params.get("force", "").lower() in {"1", "true", "yes"}
        services.remove_node(node_id=node_id, actor=actor_of(request), force=force)
        return Response({"id": node_id, "deleted": True})


class WorkerDrainView(AdminAPIView):

    @extend_schema(operation_id="workers_drain", request=None, responses=WorkerOutputSerializer)
    def post(self, request: Request, node_id: int) -> Response:
        services.drain_node(node_id=node_id, actor=actor_of(request))
        return Response(WorkerOutputSerializer(selectors.get_node(node_id=node_id)).data)


class WorkerUndrainView(AdminAPIView):

    @extend_schema(operation_id="workers_undrain", request=None, responses=WorkerOutputSerializer)
    def post(self, request: Request, node_id: int) -> Response:
        services.undrain_node(node_id=node_id, actor=actor_of(request))
        return Response(WorkerOutputSerializer(selectors.get_node(node_id=node_id)).data)


class NodeRegisterView(APIView):
    authentication_classes: list[type] = []
    permission_classes = [NodeToken]

    @extend_schema_serializer(component_name="NodeRegisterInput")
    class InputSerializer(serializers.Serializer):
        name = serializers.RegexField(r"^[A-Za-z0-9._-]{1,100}$")
        address = serializers.URLField()
        models = serializers.ListField(child=serializers.CharField(max_length=200), allow_empty=True)
        slots = serializers.IntegerField(min_value=1, default=1)

    @extend_schema(
        operation_id="nodes_register",
        auth=NODE_AUTH,  # type: ignore[arg-type]  (security requirement objects, as drf-spectacular's get_auth returns)
        request=InputSerializer,
        responses={
            201: inline_serializer(
                "NodeRegistered", {"id": serializers.IntegerField(), "models": serializers.ListField(child=serializers.DictField())}
            )
        },
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        node, models = services.register_node(**data.validated_data)
        loads = [
            {"id": m.pk, "name": m.name, "path": m.file.path, "n_ctx": m.n_ctx, "embeddings": m.embeddings} for m in models
        ]
        return Response({"id": node.pk, "models": loads}, status=201)


class HeartbeatInput(serializers.Serializer):
    status = serializers.ChoiceField([Node.Status.STARTING, Node.Status.READY, Node.Status.DRAINING])
    telemetry = serializers.DictField()
    models = serializers.DictField(child=serializers.DictField(), required=False, default=dict)


@csrf_exempt
async def node_heartbeat(request: HttpRequest, node_id: int) -> HttpResponse:
    """POST /internal/nodes/<id>/heartbeat (node token): liveness, load and model reports.

    An async view, unlike the other node calls, because every node sends one every few seconds.
    Under ASGI a sync view gets a thread of its own per request, and with it a new database
    connection: that cost the gateway ~20 ms of CPU per heartbeat (docs/benchmarks.md). Here the
    write runs on the loop's long-lived executor threads, which keep their connections (Channels'
    wrapper drops one that failed or outlived CONN_MAX_AGE, as Django does between requests).
    """
    try:
        if request.method != "POST":
            raise MethodNotAllowed("POST", request.path)
        _check_node_token(request)
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise InvalidJson() from None
        data = HeartbeatInput(data=body)
        if not data.is_valid():
            raise invalid_from_detail(data.errors)
        node = await database_sync_to_async(services.heartbeat_node, thread_sensitive=False)(node_id=node_id, **data.validated_data)
    except ApiError as exc:
        return exc.to_response()
    return HttpResponse(orjson.dumps({"id": node.pk, "drain_requested": node.drain_requested}), content_type="application/json")


class NodeDeregisterView(APIView):
    authentication_classes: list[type] = []
    permission_classes = [NodeToken]

    @extend_schema(
        operation_id="nodes_deregister",
        auth=NODE_AUTH,  # type: ignore[arg-type]
        request=None,
        responses=inline_serializer("NodeDeregistered", {"id": serializers.IntegerField(), "status": serializers.CharField()}),
    )
    def post(self, request: Request, node_id: int) -> Response:
        services.deregister_node(node_id=node_id)
        return Response({"id": node_id, "status": Node.Status.OFFLINE})
