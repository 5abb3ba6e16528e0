"""Control API for governance: keys, projects and policies (`/v1/admin/*`, admin scope)."""

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from . import selectors, services
from .errors import KeyNotFound, ProjectNotFound
from .models import RoutingPolicy, Scope
from .permissions import AdminAPIView, actor_of, query_bool


class QuotaInput(serializers.Serializer):
    requests_per_minute = serializers.IntegerField(min_value=0, required=False, allow_null=True)
    tokens_per_minute = serializers.IntegerField(min_value=0, required=False, allow_null=True)
    tokens_per_day = serializers.IntegerField(min_value=0, required=False, allow_null=True)
    max_concurrent = serializers.IntegerField(min_value=0, required=False, allow_null=True)


class QuotaOutput(serializers.Serializer):
    requests_per_minute = serializers.IntegerField(allow_null=True)
    tokens_per_minute = serializers.IntegerField(allow_null=True)
    tokens_per_day = serializers.IntegerField(allow_null=True)
    max_concurrent = serializers.IntegerField(allow_null=True)


class KeyOutput(QuotaOutput):
    id = serializers.IntegerField()
    object = serializers.SerializerMethodField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    project = serializers.IntegerField(source="project_id")
    project_name = serializers.CharField(source="project.name")
    scopes = serializers.ListField(child=serializers.CharField())
    allowed_models = serializers.ListField(child=serializers.CharField())
    created_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)

    def get_object(self, key: object) -> str:
        return "api_key"


class KeyListCreateView(AdminAPIView):
    """GET lists keys (never their secrets); POST creates one and returns its secret once."""

    @extend_schema_serializer(component_name="KeyListCreateInput")
    class InputSerializer(QuotaInput):
        name = serializers.CharField(max_length=100)
        project = serializers.IntegerField(required=False, allow_null=True)
        scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.values), required=False, min_length=1)
        allowed_models = serializers.ListField(child=serializers.CharField(max_length=200), required=False)
        expires_at = serializers.DateTimeField(required=False, allow_null=True)

    @extend_schema_serializer(component_name="KeyListCreateOutput")
    class OutputSerializer(KeyOutput):
        secret = serializers.CharField()

    @extend_schema(
        operation_id="admin_keys_list",
        parameters=[OpenApiParameter("project", int), OpenApiParameter("active", bool)],
        responses=inline_serializer("KeyList", {"object": serializers.CharField(), "data": KeyOutput(many=True)}),
    )
    def get(self, request: Request) -> Response:
        project = request.query_params.get("project")
        if project is not None and not project.isdigit():
            raise ProjectNotFound(param="project")
        keys = selectors.list_api_keys(project_id=int(project) if project else None, active=query_bool(request.query_params.get("active")))
        return Response({"object": "list", "data": KeyOutput(keys, many=True).data})

    @extend_schema(operation_id="admin_keys_create", request=InputSerializer, responses={201: OutputSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        key, secret = services.create_api_key(
            name=fields.pop("name"),
            project_id=fields.pop("project", None),
            scopes=fields.pop("scopes", None),
            allowed_models=fields.pop("allowed_models", None),
            expires_at=fields.pop("expires_at", None),
            actor=actor_of(request),
            request_id=self.request_id(),
            **fields,
        )
        key.secret = secret  # type: ignore[attr-defined]
        return Response(self.OutputSerializer(key).data, status=201)


class KeyDetailView(AdminAPIView):
    """GET one key; PATCH its scopes, allowlist, expiry or quotas; DELETE revokes it (everywhere within 1 s)."""

    @extend_schema_serializer(component_name="KeyDetailInput")
    class InputSerializer(QuotaInput):
        name = serializers.CharField(max_length=100, required=False)
        scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.values), required=False, min_length=1)
        allowed_models = serializers.ListField(child=serializers.CharField(max_length=200), required=False)
        expires_at = serializers.DateTimeField(required=False, allow_null=True)

    OutputSerializer = KeyOutput

    def _key(self, key_id: int):  # type: ignore[no-untyped-def]
        key = selectors.list_api_keys().filter(pk=key_id).first()
        if key is None:
            raise KeyNotFound()
        return key

    @extend_schema(operation_id="admin_keys_retrieve", responses=KeyOutput)
    def get(self, request: Request, key_id: int) -> Response:
        return Response(self.OutputSerializer(self._key(key_id)).data)

    @extend_schema(operation_id="admin_keys_update", request=InputSerializer, responses=KeyOutput)
    def patch(self, request: Request, key_id: int) -> Response:
        data = self.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        services.update_api_key(key_id=key_id, actor=actor_of(request), changes=dict(data.validated_data), request_id=self.request_id())
        return Response(self.OutputSerializer(self._key(key_id)).data)

    @extend_schema(operation_id="admin_keys_revoke", responses={200: KeyOutput})
    def delete(self, request: Request, key_id: int) -> Response:
        services.revoke_api_key(key_id=key_id, actor=actor_of(request), request_id=self.request_id())
        return Response(self.OutputSerializer(self._key(key_id)).data)


class ProjectOutput(QuotaOutput):
    id = serializers.IntegerField()
    object = serializers.SerializerMethodField()
    name = serializers.CharField()
    description = serializers.CharField()
    allowed_models = serializers.ListField(child=serializers.CharField())
    max_tokens_cap = serializers.IntegerField(allow_null=True)
    default_priority = serializers.IntegerField()
    max_priority = serializers.IntegerField()
    policy_version = serializers.IntegerField()
    updated_at = serializers.DateTimeField()

    def get_object(self, project: object) -> str:
        return "project"


class ProjectInput(QuotaInput):
    description = serializers.CharField(max_length=500, required=False, allow_blank=True)
    allowed_models = serializers.ListField(child=serializers.CharField(max_length=200), required=False)
    max_tokens_cap = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    default_priority = serializers.IntegerField(min_value=-100, max_value=100, required=False)
    max_priority = serializers.IntegerField(min_value=-100, max_value=100, required=False)


class ProjectListCreateView(AdminAPIView):
    """GET lists projects with their quotas and policy; POST creates one."""

    @extend_schema_serializer(component_name="ProjectListCreateInput")
    class InputSerializer(ProjectInput):
        name = serializers.CharField(max_length=100)

    OutputSerializer = ProjectOutput

    @extend_schema(
        operation_id="admin_projects_list",
        responses=inline_serializer("ProjectList", {"object": serializers.CharField(), "data": ProjectOutput(many=True)}),
    )
    def get(self, request: Request) -> Response:
        return Response({"object": "list", "data": self.OutputSerializer(selectors.list_projects(), many=True).data})

    @extend_schema(operation_id="admin_projects_create", request=InputSerializer, responses={201: ProjectOutput})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        project = services.create_project(name=fields.pop("name"), actor=actor_of(request), **fields)
        return Response(self.OutputSerializer(project).data, status=201)


class ProjectDetailView(AdminAPIView):
    """GET a project; PATCH its policy or quotas (a new policy version, applied by every gateway within seconds)."""

    @extend_schema_serializer(component_name="ProjectDetailInput")
    class InputSerializer(ProjectInput):
        comment = serializers.CharField(max_length=500, required=False, allow_blank=True)

    OutputSerializer = ProjectOutput

    def _project(self, project_id: int):  # type: ignore[no-untyped-def]
        project = selectors.list_projects().filter(pk=project_id).first()
        if project is None:
            raise ProjectNotFound()
        return project

    @extend_schema(operation_id="admin_projects_retrieve", responses=ProjectOutput)
    def get(self, request: Request, project_id: int) -> Response:
        return Response(self.OutputSerializer(self._project(project_id)).data)

    @extend_schema(operation_id="admin_projects_update", request=InputSerializer, responses=ProjectOutput)
    def patch(self, request: Request, project_id: int) -> Response:
        data = self.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        changes = dict(data.validated_data)
        comment = changes.pop("comment", "")
        project = services.update_project(project_id=project_id, actor=actor_of(request), changes=changes, comment=comment)
        return Response(self.OutputSerializer(project).data)


class PolicyView(AdminAPIView):
    """GET the global policy (routing, admission limits, defaults) and its history; PUT saves a new version."""

    @extend_schema_serializer(component_name="PolicyInput")
    class InputSerializer(serializers.Serializer):
        routing_policy = serializers.ChoiceField(choices=RoutingPolicy.values, required=False)
        max_queue_per_model = serializers.IntegerField(min_value=1, max_value=100_000, required=False)
        queue_timeout_seconds = serializers.FloatField(min_value=0.1, max_value=3600, required=False)
        default_max_tokens_cap = serializers.IntegerField(min_value=1, required=False, allow_null=True)
        comment = serializers.CharField(max_length=500, required=False, allow_blank=True)

    @extend_schema_serializer(component_name="PolicyVersion")
    class VersionSerializer(serializers.Serializer):
        version = serializers.IntegerField()
        data = serializers.JSONField()
        changed_by = serializers.CharField()
        changed_at = serializers.DateTimeField()
        comment = serializers.CharField()

    @extend_schema_serializer(component_name="PolicyOutput")
    class OutputSerializer(serializers.Serializer):
        routing_policy = serializers.CharField()
        max_queue_per_model = serializers.IntegerField()
        queue_timeout_seconds = serializers.FloatField()
        default_max_tokens_cap = serializers.IntegerField(allow_null=True)
        version = serializers.IntegerField()
        updated_by = serializers.CharField()
        updated_at = serializers.DateTimeField()
        history = serializers.ListField(child=serializers.DictField(), required=False)

    def _body(self) -> dict[str, object]:
        body = dict(self.OutputSerializer(selectors.get_global_policy()).data)
        body["history"] = self.VersionSerializer(selectors.list_policy_versions(limit=20), many=True).data
        return body

    @extend_schema(operation_id="admin_policy_retrieve", responses=OutputSerializer)
    def get(self, request: Request) -> Response:
        return Response(self._body())

    @extend_schema(operation_id="admin_policy_update", request=InputSerializer, responses=OutputSerializer)
    def put(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        changes = dict(data.validated_data)
        comment = changes.pop("comment", "")
        services.update_global_policy(actor=actor_of(request), changes=changes, comment=comment, request_id=self.request_id())
        return Response(self._body())
