from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AccessConfig(AppConfig):
    name = "axserving.access"
    label = "access"
    verbose_name = "Access (projects, API keys, policies)"

    def ready(self) -> None:
        from . import schema  # noqa: F401 - registers the OpenAPI security scheme
        from .staff import ensure_staff_groups_after_migrate

        post_migrate.connect(ensure_staff_groups_after_migrate, dispatch_uid="axs-staff-groups")
