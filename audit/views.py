"""Control API for the audit chain and the usage log (`/v1/admin/audit*`, `/v1/admin/usage`; admin scope)."""

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response

from axserving.access.permissions import AdminAPIView, actor_of
from axserving.access.selectors import label_usage_rows
from axserving.errors import invalid_from_detail

from . import exports, selectors, services
from .filters import AuditEventFilter

_END = object()


async def _aiterate(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Pull a sync generator chunk by chunk on the request's DB thread (its server-side cursor lives there).

    Handing Django a sync iterator would make it buffer the whole export in a list under ASGI.
    """
    step = sync_to_async(next, thread_sensitive=True)
    while (chunk := await step(chunks, _END)) is not _END:
        yield chunk  # type: ignore[misc]


def stream_export(queryset, fmt: str, filename: str) -> StreamingHttpResponse:  # type: ignore[no-untyped-def]
    response = StreamingHttpResponse(_aiterate(exports.iter_export(queryset, fmt=fmt)), content_type=exports.FORMATS[fmt])
    response["Content-Disposition"] = f'attachment; filename="{filename}.{fmt}"'
    return response


class AuditPagination(LimitOffsetPagination):
    default_limit = 100
    max_limit = 1000


class AuditListView(AdminAPIView):
    """GET audit events filtered by actor, action, outcome and time; `?format=csv|jsonl` streams the whole export."""

    @extend_schema_serializer(component_name="AuditListOutput")
    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        created_at = serializers.DateTimeField()
        actor = serializers.CharField()
        action = serializers.CharField()
        target = serializers.CharField()
        outcome = serializers.CharField()
        request_id = serializers.CharField()
        before = serializers.JSONField()
        after = serializers.JSONField()
        data = serializers.JSONField()
        prev_hash = serializers.CharField()
        hash = serializers.CharField()

    @extend_schema(
        operation_id="admin_audit_list",
        parameters=[
            OpenApiParameter("format", str, enum=sorted(exports.FORMATS), description="stream the whole filtered log instead of a page"),
            OpenApiParameter("actor", str),
            OpenApiParameter("action", str),
            OpenApiParameter("action_prefix", str),
            OpenApiParameter("target", str),
            OpenApiParameter("outcome", str),
            OpenApiParameter("request_id", str),
            OpenApiParameter("since", OpenApiTypes.DATETIME),
            OpenApiParameter("until", OpenApiTypes.DATETIME),
            OpenApiParameter("limit", int),
            OpenApiParameter("offset", int),
        ],
        responses=OutputSerializer(many=True),
    )
    def get(self, request: Request):  # type: ignore[no-untyped-def]
        fmt = request.query_params.get("format")
        if fmt is not None and fmt not in exports.FORMATS:
            raise invalid_from_detail({"format": [f"Must be one of {sorted(exports.FORMATS)}."]})
        filters = AuditEventFilter(request.query_params, queryset=selectors.list_audit_events())
        if not filters.is_valid():
            raise invalid_from_detail(filters.errors)
        if fmt:
            used = {name: value for name, value in filters.form.cleaned_data.items() if value not in (None, "")}
            services.record_export(actor=actor_of(request), fmt=fmt, filters=used, request_id=self.request_id())
            return stream_export(filters.qs, fmt, f"audit-{timezone.now():%Y%m%dT%H%M%S}")
        paginator = AuditPagination()
        page = paginator.paginate_queryset(filters.qs, request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)


class AuditVerifyView(AdminAPIView):
    """GET: walk the whole hash chain and report the first broken record, if any."""

    @extend_schema(
        operation_id="admin_audit_verify",
        responses=inline_serializer(
            "ChainReport",
            {
                "ok": serializers.BooleanField(),
                "checked": serializers.IntegerField(),
                "broken_id": serializers.IntegerField(allow_null=True),
                "reason": serializers.CharField(),
                "expected": serializers.CharField(),
                "found": serializers.CharField(),
            },
        ),
    )
    def get(self, request: Request) -> Response:
        return Response(selectors.verify_chain().as_dict())


class UsageReportView(AdminAPIView):
    """GET requests and tokens per project/key/model over a period (default: the last 30 days), for chargeback."""

    @extend_schema_serializer(component_name="UsageReportInput")
    class InputSerializer(serializers.Serializer):
        since = serializers.DateTimeField(required=False)
        until = serializers.DateTimeField(required=False)
        group_by = serializers.CharField(required=False, default="project,key,model")

        def validate_group_by(self, value: str) -> list[str]:
            names = [name.strip() for name in value.split(",") if name.strip()]
            unknown = [name for name in names if name not in selectors.USAGE_GROUPS]
            if unknown or not names:
                raise serializers.ValidationError(f"Use a comma-separated subset of {sorted(selectors.USAGE_GROUPS)}.")
            return names

    @extend_schema(
        operation_id="admin_usage_report",
        parameters=[InputSerializer],
        responses=inline_serializer("UsageReport", {"object": serializers.CharField(), "since": serializers.DateTimeField(), "until": serializers.DateTimeField(), "data": serializers.ListField(child=serializers.DictField())}),
    )
    def get(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.query_params)
        data.is_valid(raise_exception=True)
        until = data.validated_data.get("until") or timezone.now()
        since = data.validated_data.get("since") or until - timedelta(days=30)
        rows = label_usage_rows(selectors.get_usage_report(since=since, until=until, group_by=data.validated_data["group_by"]))
        return Response({"object": "list", "since": since, "until": until, "data": rows})
