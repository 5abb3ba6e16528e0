"""The two staff roles of the Django admin, as groups: operators run the fleet, auditors read the record."""

from django.apps import AppConfig, apps
from django.contrib.auth.models import Group, Permission
from django.db import transaction

OPERATORS = "operators"
AUDITORS = "auditors"
# Operators manage nodes, models and deployments, keys, projects and policies; they read the audit
# log but cannot export it. Auditors only read: audit, usage, keys, policies; they may export.
_OPERATOR_APPS = ("fleet", "models_registry", "access")
_READ_APPS = ("fleet", "models_registry", "access", "audit")


@transaction.atomic
def ensure_staff_groups() -> None:
    """Create or refresh the operators and auditors groups and their permissions (DB)."""
    manage = Permission.objects.filter(content_type__app_label__in=_OPERATOR_APPS)
    read = Permission.objects.filter(content_type__app_label__in=_READ_APPS, codename__startswith="view_")
    export = Permission.objects.filter(content_type__app_label="audit", codename="export_auditevent")
    operators, _ = Group.objects.get_or_create(name=OPERATORS)
    operators.permissions.set(list(manage) + list(read.filter(content_type__app_label="audit")))
    auditors, _ = Group.objects.get_or_create(name=AUDITORS)
    auditors.permissions.set(list(read) + list(export))


def ensure_staff_groups_after_migrate(sender: AppConfig, **kwargs: object) -> None:
    # Permissions exist only once post_migrate has run for every app, so act on the last one.
    with_models = [config for config in apps.get_app_configs() if config.models_module is not None]
    if sender is with_models[-1] and kwargs.get("using", "default") == "default":
        ensure_staff_groups()
