from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path

from . import consumers

# The dashboard rides on the admin's session cookie: session lookup plus the Origin check.
websocket_urlpatterns = [
    path("ws/dashboard", AllowedHostsOriginValidator(AuthMiddlewareStack(consumers.FleetDashboardConsumer.as_asgi()))),
]
