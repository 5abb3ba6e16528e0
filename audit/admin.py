from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, StreamingHttpResponse

from .admin_mixins import admin_actor
from .models import AuditEvent, UsageRecord
from .services import record_export
from .views import stream_export


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["id", "created_at", "actor", "action", "target", "outcome", "request_id"]
    list_filter = ["action", "outcome", "created_at"]
    search_fields = ["actor", "target", "request_id"]
    actions = ["export_csv", "export_jsonl"]

    def has_export_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("audit.export_auditevent")

    @admin.action(description="Export selected events as CSV", permissions=["export"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> StreamingHttpResponse:
        record_export(actor=admin_actor(request), fmt="csv", filters={"selected": queryset.count()})
        return stream_export(queryset, "csv", "audit")

    @admin.action(description="Export selected events as JSON Lines", permissions=["export"])
    def export_jsonl(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> StreamingHttpResponse:
        record_export(actor=admin_actor(request), fmt="jsonl", filters={"selected": queryset.count()})
        return stream_export(queryset, "jsonl", "audit")


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "request_id", "project_id", "key_id", "model", "node", "status", "total_tokens", "latency_ms"]
    list_filter = ["model", "status", "created_at"]
    search_fields = ["request_id"]
