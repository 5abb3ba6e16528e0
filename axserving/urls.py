from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt

from axserving import openapi
from fleet import operations
from fleet import views as fleet
from fleet.views import health
from inference import views as inference
from models_registry import views as lifecycle


def by_method(default: Callable[..., Any], **handlers: Callable[..., Any]) -> Callable[..., Any]:
    """One path, a view per HTTP method (the OpenAI async views and the DRF control views share paths)."""

    async def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        handler = handlers.get(request.method or "", default)
        if iscoroutinefunction(handler):
            return await handler(request, *args, **kwargs)
        return await sync_to_async(handler)(request, *args, **kwargs)

    view.handlers = handlers  # type: ignore[attr-defined]  (read by axserving.openapi for the schema)
    return csrf_exempt(view)


urlpatterns = [
    path("health", health, name="health"),
    path("metrics", operations.prometheus_metrics, name="prometheus-django-metrics"),
    path("dashboard", operations.dashboard, name="dashboard"),
    path("v1/metrics", operations.MetricsView.as_view(), name="metrics-json"),
    path("v1/openapi.json", openapi.SchemaView.as_view(), name="openapi-schema"),
    path("v1/docs", openapi.DocsView.as_view(), name="openapi-docs"),
    path("v1/admin/status", operations.AdminStatusView.as_view(), name="admin-status"),
    path("v1/admin/diagnostics", operations.AdminDiagnosticsView.as_view(), name="admin-diagnostics"),
    path("v1/admin/startup-report", operations.AdminStartupReportView.as_view(), name="admin-startup-report"),
    path("v1/models", by_method(inference.models_list, POST=lifecycle.ModelCreateView.as_view()), name="models"),
    path(
        "v1/models/<str:model_id>",
        by_method(inference.model_detail, DELETE=lifecycle.ModelDeleteView.as_view()),
        name="model-detail",
    ),
    path("v1/models/<str:model_id>/reload", lifecycle.ModelReloadView.as_view(), name="model-reload"),
    path("v1/deployments", lifecycle.DeploymentListView.as_view(), name="deployments"),
    path("v1/deployments/<int:deployment_id>", lifecycle.DeploymentDetailView.as_view(), name="deployment-detail"),
    path("v1/workers", fleet.WorkerListView.as_view(), name="workers"),
    path("v1/workers/<int:node_id>", fleet.WorkerDetailView.as_view(), name="worker-detail"),
    path("v1/workers/<int:node_id>/drain", fleet.WorkerDrainView.as_view(), name="worker-drain"),
    path("v1/workers/<int:node_id>/undrain", fleet.WorkerUndrainView.as_view(), name="worker-undrain"),
    path("internal/nodes/register", fleet.NodeRegisterView.as_view(), name="node-register"),
    path("internal/nodes/<int:node_id>/heartbeat", fleet.node_heartbeat, name="node-heartbeat"),
    path("internal/nodes/<int:node_id>/deregister", fleet.NodeDeregisterView.as_view(), name="node-deregister"),
    path("v1/admin/", include("axserving.access.urls")),
    path("admin/", admin.site.urls),
]

handler400 = "axserving.errors.handler400"
handler403 = "axserving.errors.handler403"
handler404 = "axserving.errors.handler404"
handler500 = "axserving.errors.handler500"
