"""Operator endpoints: /metrics, /v1/metrics, /v1/admin/status, /diagnostics, /startup-report, /dashboard."""

from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django_prometheus.exports import ExportToDjangoView
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from axserving import metrics
from axserving.access.selectors import get_api_key
from axserving.errors import ApiError, AuthenticationFailed, PermissionDenied

from . import collectors, health, status
from axserving.access.permissions import AdminAPIView

collectors.register()


class MetricsScope(BasePermission):
    """A bearer key with the `metrics` or the `admin` scope."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.auth is None:
            raise AuthenticationFailed()
        if not {"metrics", "admin"} & request.auth.scopes:
            raise PermissionDenied("This key lacks the 'metrics' scope.", code="missing_scope")
        return True


def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text for this process (django-prometheus' exporter); a metrics key when AXS_METRICS_REQUIRE_KEY."""
    if settings.AXS_METRICS_REQUIRE_KEY:
        try:
            key = get_api_key(request.headers.get("Authorization", ""))
            if not {"metrics", "admin"} & key.scopes:
                raise PermissionDenied("This key lacks the 'metrics' scope.", code="missing_scope")
        except ApiError as exc:
            return exc.to_response()
    return ExportToDjangoView(request)  # type: ignore[no-any-return]


class MetricsView(APIView):
    """The key serving figures of this gateway process and the fleet's nodes, as JSON."""

    permission_classes = [MetricsScope]

    @extend_schema(operation_id="metrics_retrieve", responses=OpenApiTypes.OBJECT)
    def get(self, request: Request) -> Response:
        nodes, problem = status.safe_node_data()
        return Response(
            {
                "object": "metrics",
                "gateway": status.GATEWAY_ID,
                **metrics.snapshot(),
                "nodes": [_node_figures(n) for n in nodes],
                "problem": problem or None,
            }
        )


def _node_figures(node: status.NodeData) -> dict[str, Any]:
    keys = ("name", "state", "inflight", "queued", "slots", "tokens_per_s", "ttft_p95_ms", "error_rate", "free_memory_bytes", "loaded_models")
    return {k: node[k] for k in keys}  # type: ignore[literal-required]


class AdminStatusView(AdminAPIView):
    """Health, this gateway's figures, nodes and models in one answer."""

    @extend_schema(operation_id="admin_status_retrieve", responses=OpenApiTypes.OBJECT)
    def get(self, request: Request) -> Response:
        nodes, problem = status.safe_node_data()
        snapshot = metrics.snapshot()
        return Response(
            {
                "health": async_to_sync(health.aget_health)(),
                "gateway": {
                    "id": status.GATEWAY_ID,
                    "uptime_s": round(status.time.time() - status.STARTED_AT, 1),
                    "inflight": snapshot["inflight"],
                    "draining": snapshot["draining"],
                    "queue_depth": snapshot["admission"]["queue_depth"],
                    "requests": snapshot["requests"]["total"],
                    "realtime_sockets": snapshot["realtime_sockets"],
                },
                "nodes": nodes,
                "models": status.list_models_status(nodes),
                "problem": problem or None,
            }
        )


class AdminDiagnosticsView(AdminAPIView):
    """Versions, configuration (secrets redacted), dependency checks and loaded models."""

    @extend_schema(operation_id="admin_diagnostics_retrieve", responses=OpenApiTypes.OBJECT)
    def get(self, request: Request) -> Response:
        return Response(status.get_diagnostics())


class AdminStartupReportView(AdminAPIView):
    """How this process started: storage chosen, fallbacks, deploy checks, warnings."""

    @extend_schema(operation_id="admin_startup_report_retrieve", responses=OpenApiTypes.OBJECT)
    def get(self, request: Request) -> Response:
        return Response(status.get_startup_report())


@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """The live fleet page; its figures arrive over the /ws/dashboard socket."""
    nodes, problem = status.safe_node_data()
    return render(
        request,
        "fleet/dashboard.html",
        {"nodes": nodes, "problem": problem, "gateway": status.GATEWAY_ID, "history_seconds": 300},
    )
