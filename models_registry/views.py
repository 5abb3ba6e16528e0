"""Model lifecycle REST (admin scope): register/deploy, unload, reload, deployments."""

from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from axserving.access.permissions import AdminAPIView, actor_of

from . import selectors, services
from .models import Deployment


class DeploymentOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="pk")
    model = serializers.CharField(source="model.name")
    node = serializers.CharField(source="node.name")
    desired = serializers.CharField()
    state = serializers.CharField()
    progress = serializers.IntegerField()
    error = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    ready_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    url = serializers.SerializerMethodField()

    def get_url(self, deployment: Deployment) -> str:
        return reverse("deployment-detail", args=[deployment.pk])


class ModelDeploymentsOutputSerializer(serializers.Serializer):
    """A model and its deployments after an unload or a reload."""

    id = serializers.CharField()
    deployments = DeploymentOutputSerializer(many=True)


class ModelCreateView(AdminAPIView):
    """POST /v1/models: register a GGUF file and/or deploy a model on a node."""

    @extend_schema_serializer(component_name="ModelCreateInput")
    class InputSerializer(serializers.Serializer):
        id = serializers.SlugField(max_length=100)
        path = serializers.CharField(required=False, max_length=1024)
        node = serializers.CharField(required=False, max_length=100)
        deploy = serializers.BooleanField(required=False, default=True)
        n_ctx = serializers.IntegerField(required=False, min_value=128, max_value=1 << 20)
        n_gpu_layers = serializers.IntegerField(required=False, min_value=-1)
        parallel = serializers.IntegerField(required=False, min_value=1, max_value=256)
        embeddings = serializers.BooleanField(required=False)
        pinned = serializers.BooleanField(required=False)
        idle_ttl_seconds = serializers.IntegerField(required=False, min_value=1)

    @extend_schema(
        operation_id="models_create",
        request=InputSerializer,
        responses={
            201: inline_serializer(
                "ModelRegistered",
                {"id": serializers.CharField(), "registered": serializers.BooleanField(), "deployment": serializers.JSONField(allow_null=True)},
            ),
            202: inline_serializer("ModelDeploying", {"id": serializers.CharField(), "deployment": DeploymentOutputSerializer()}),
            409: OpenApiResponse(description="Already loaded or being loaded there, the id names another file, or no node fits."),
        },
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = dict(data.validated_data)
        settings_fields = {k: v[k] for k in ("n_ctx", "n_gpu_layers", "parallel", "embeddings", "pinned", "idle_ttl_seconds") if k in v}
        if "path" in v:
            services.register_model(name=v["id"], path=v["path"], actor=actor_of(request), **settings_fields)
        if not v["deploy"]:
            return Response({"id": v["id"], "registered": True, "deployment": None}, status=201)
        deployment = services.deploy_model(model_name=v["id"], node_name=v.get("node"), actor=actor_of(request))
        body = {"id": deployment.model.name, "deployment": DeploymentOutputSerializer(deployment).data}
        return Response(body, status=202, headers={"Location": body["deployment"]["url"]})


class ModelDeleteView(AdminAPIView):
    """DELETE /v1/models/{id}: unload everywhere (in-flight requests finish first)."""

    @extend_schema(operation_id="models_destroy", responses={200: ModelDeploymentsOutputSerializer})
    def delete(self, request: Request, model_id: str) -> Response:
        deployments = services.unload_model(model_name=model_id, actor=actor_of(request))
        return Response({"id": model_id, "deployments": DeploymentOutputSerializer(deployments, many=True).data})


class ModelReloadView(AdminAPIView):

    @extend_schema(
        operation_id="models_reload",
        request=None,
        responses={202: ModelDeploymentsOutputSerializer, 409: OpenApiResponse(description="The model is not loaded anywhere.")},
    )
    def post(self, request: Request, model_id: str) -> Response:
        deployments = services.reload_model(model_name=model_id, actor=actor_of(request))
        return Response({"id": model_id, "deployments": DeploymentOutputSerializer(deployments, many=True).data}, status=202)


class DeploymentListView(AdminAPIView):

    @extend_schema(
        operation_id="deployments_list",
        responses=inline_serializer("DeploymentList", {"object": serializers.CharField(), "data": DeploymentOutputSerializer(many=True)}),
    )
    def get(self, request: Request) -> Response:
        deployments = selectors.list_deployments()
        return Response({"object": "list", "data": DeploymentOutputSerializer(deployments, many=True).data})


class DeploymentDetailView(AdminAPIView):

    @extend_schema(operation_id="deployments_retrieve", responses=DeploymentOutputSerializer)
    def get(self, request: Request, deployment_id: int) -> Response:
        return Response(DeploymentOutputSerializer(selectors.get_deployment(deployment_id=deployment_id)).data)
