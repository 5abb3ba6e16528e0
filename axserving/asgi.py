import os

from channels.routing import ProtocolTypeRouter, URLRouter
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "axserving.settings")
django_asgi_app = get_asgi_application()

from fleet.routing import websocket_urlpatterns as fleet_sockets  # noqa: E402  (needs the app registry)
from inference.routing import websocket_urlpatterns as inference_sockets  # noqa: E402

# The all-in-one has no web server in front of it: serve the admin's static files here.
# WebSocket inference authenticates with its bearer key (no session); the dashboard route
# carries its own session and Origin checks (fleet/routing.py).
application = ProtocolTypeRouter(
    {"http": ASGIStaticFilesHandler(django_asgi_app), "websocket": URLRouter([*inference_sockets, *fleet_sockets])}
)
