from django.contrib import admin

from .models import Node


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "address", "status", "inflight", "queued", "last_heartbeat"]
    list_filter = ["status"]
