"""Audit rows for Django admin actions that do not go through a service (users, groups, other apps' models)."""

from typing import Any

from django.db.models import Model, QuerySet
from django.http import HttpRequest

from .services import record_event


def admin_actor(request: HttpRequest) -> str:
    return f"user:{request.user.get_username()}"


def _target(obj: Model) -> str:
    return f"{obj._meta.label_lower}:{obj.pk}"


class AuditedAdminMixin:
    """Mix into a ModelAdmin: every add, change and delete it logs also lands in the audit chain."""

    def log_addition(self, request: HttpRequest, obj: Model, message: Any) -> Any:
        record_event(actor=admin_actor(request), action="admin.added", target=_target(obj), after={"repr": str(obj), "change": message})
        return super().log_addition(request, obj, message)  # type: ignore[misc]

    def log_change(self, request: HttpRequest, obj: Model, message: Any) -> Any:
        record_event(actor=admin_actor(request), action="admin.changed", target=_target(obj), after={"repr": str(obj), "change": message})
        return super().log_change(request, obj, message)  # type: ignore[misc]

    def log_deletions(self, request: HttpRequest, queryset: QuerySet[Model]) -> Any:
        for obj in queryset:
            record_event(actor=admin_actor(request), action="admin.deleted", target=_target(obj), before={"repr": str(obj)})
        return super().log_deletions(request, queryset)  # type: ignore[misc]
