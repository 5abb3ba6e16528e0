from django.apps import AppConfig


class AccessConfig(AppConfig):
    name = "axserving.access"
    label = "access"
    verbose_name = "Access (API keys)"
