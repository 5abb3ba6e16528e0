import django_filters

from .models import AuditEvent, Outcome


class AuditEventFilter(django_filters.FilterSet):
    """Query filters of `GET /v1/admin/audit`, the admin export and `manage.py audit export`."""

    actor = django_filters.CharFilter()
    action = django_filters.CharFilter()
    action_prefix = django_filters.CharFilter(field_name="action", lookup_expr="startswith")
    target = django_filters.CharFilter()
    outcome = django_filters.ChoiceFilter(choices=Outcome.choices)
    request_id = django_filters.CharFilter()
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields: list[str] = []
