from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from . import selectors, services
from .models import Node


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "address", "state", "inflight", "queued", "slots", "last_heartbeat"]
    list_filter = ["status", "drain_requested"]
    readonly_fields = ["status", "started_at", "last_heartbeat", "inflight", "queued", "slots", "telemetry"]
    actions = ["drain", "undrain"]

    @admin.display(description="state")
    def state(self, node: Node) -> str:
        return selectors.node_state(node)

    @admin.action(description="Drain: stop routing new requests to the selected nodes")
    def drain(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        for node in queryset:
            services.drain_node(node_id=node.pk, actor=f"user:{request.user}")
        self.message_user(request, f"Draining {queryset.count()} node(s).", messages.SUCCESS)

    @admin.action(description="Undrain: route to the selected nodes again")
    def undrain(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        for node in queryset:
            services.undrain_node(node_id=node.pk, actor=f"user:{request.user}")
        self.message_user(request, f"Undrained {queryset.count()} node(s).", messages.SUCCESS)
