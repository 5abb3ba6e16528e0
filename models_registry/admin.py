from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from axserving.errors import ApiError

from . import services
from .models import Deployment, ModelFile, RegisteredModel


@admin.register(ModelFile)
class ModelFileAdmin(admin.ModelAdmin):
    list_display = ["path", "architecture", "parameter_count", "quantization", "context_length", "has_chat_template", "size_bytes"]
    readonly_fields = [f.name for f in ModelFile._meta.fields]


class DeploymentInline(admin.TabularInline):
    model = Deployment
    fields = ["node", "desired", "state", "progress", "error", "updated_at", "last_used_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(RegisteredModel)
class RegisteredModelAdmin(admin.ModelAdmin):
    list_display = ["name", "aliases", "file", "n_ctx", "parallel", "embeddings", "pinned", "idle_ttl_seconds"]
    inlines = [DeploymentInline]
    actions = ["load", "unload", "reload"]

    def _each(self, request: HttpRequest, queryset: QuerySet[RegisteredModel], verb: str, action) -> None:  # type: ignore[no-untyped-def]
        for model in queryset:
            try:
                action(model_name=model.name, actor=f"user:{request.user}")
                self.message_user(request, f"{verb} {model.name}.", messages.SUCCESS)
            except ApiError as exc:
                self.message_user(request, f"{model.name}: {exc.message}", messages.ERROR)

    @admin.action(description="Load on the node placement picks")
    def load(self, request: HttpRequest, queryset: QuerySet[RegisteredModel]) -> None:
        self._each(request, queryset, "Loading", services.deploy_model)

    @admin.action(description="Unload everywhere (in-flight requests finish)")
    def unload(self, request: HttpRequest, queryset: QuerySet[RegisteredModel]) -> None:
        self._each(request, queryset, "Unloading", services.unload_model)

    @admin.action(description="Reload (swap in a fresh instance)")
    def reload(self, request: HttpRequest, queryset: QuerySet[RegisteredModel]) -> None:
        self._each(request, queryset, "Reloading", services.reload_model)


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["model", "node", "desired", "state", "progress", "updated_at", "last_used_at", "error"]
    list_filter = ["state", "desired"]
    readonly_fields = ["desired", "state", "progress", "error", "created_at", "updated_at", "ready_at", "last_used_at"]
    actions = ["load_here"]

    @admin.action(description="Load the model on this deployment's node")
    def load_here(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        for deployment in queryset.select_related("model", "node"):
            try:
                services.deploy_model(model_name=deployment.model.name, node_name=deployment.node.name, actor=f"user:{request.user}")
                self.message_user(request, f"Loading {deployment}.", messages.SUCCESS)
            except ApiError as exc:
                self.message_user(request, f"{deployment}: {exc.message}", messages.ERROR)
