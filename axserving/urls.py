from django.contrib import admin
from django.urls import path

from fleet import operations
from fleet import views as fleet
from fleet.views import health
from inference import views as inference

urlpatterns = [
    path("health", health, name="health"),
    path("metrics", operations.prometheus_metrics, name="prometheus-django-metrics"),
    path("dashboard", operations.dashboard, name="dashboard"),
    path("v1/metrics", operations.MetricsView.as_view(), name="metrics-json"),
    path("v1/admin/status", operations.AdminStatusView.as_view(), name="admin-status"),
    path("v1/admin/diagnostics", operations.AdminDiagnosticsView.as_view(), name="admin-diagnostics"),
    path("v1/admin/startup-report", operations.AdminStartupReportView.as_view(), name="admin-startup-report"),
    path("v1/chat/completions", inference.chat_completions, name="chat-completions"),
    path("v1/completions", inference.completions, name="completions"),
    path("v1/embeddings", inference.embeddings, name="embeddings"),
    path("v1/tokenize", inference.tokenize, name="tokenize"),
    path("v1/detokenize", inference.detokenize, name="detokenize"),
    path("v1/models", inference.models_list, name="models"),
    path("v1/models/<str:model_id>", inference.model_detail, name="model-detail"),
    path("v1/workers", fleet.WorkerListView.as_view(), name="workers"),
    path("v1/workers/<int:node_id>", fleet.WorkerDetailView.as_view(), name="worker-detail"),
    path("v1/workers/<int:node_id>/drain", fleet.WorkerDrainView.as_view(), name="worker-drain"),
    path("v1/workers/<int:node_id>/undrain", fleet.WorkerUndrainView.as_view(), name="worker-undrain"),
    path("internal/nodes/register", fleet.NodeRegisterView.as_view(), name="node-register"),
    path("internal/nodes/<int:node_id>/heartbeat", fleet.NodeHeartbeatView.as_view(), name="node-heartbeat"),
    path("internal/nodes/<int:node_id>/deregister", fleet.NodeDeregisterView.as_view(), name="node-deregister"),
    path("admin/", admin.site.urls),
]

handler400 = "axserving.errors.handler400"
handler403 = "axserving.errors.handler403"
handler404 = "axserving.errors.handler404"
handler500 = "axserving.errors.handler500"
