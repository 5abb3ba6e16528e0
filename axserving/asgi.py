import os

from channels.routing import ProtocolTypeRouter, URLRouter
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application
from django.urls import path, re_path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "axserving.settings")
django_asgi_app = get_asgi_application()

from fleet.routing import websocket_urlpatterns as fleet_sockets  # noqa: E402  (needs the app registry)
from inference.consumers import OPENAI_POSTS, OpenAIHttpConsumer  # noqa: E402
from inference.routing import websocket_urlpatterns as inference_sockets  # noqa: E402

# The OpenAI inference POSTs skip Django's request stack (inference/consumers.py); everything
# else (model listings, control API, admin, dashboard, /metrics, /health) is Django's. The
# all-in-one has no web server in front of it, so the admin's static files are served here.
inference_http = OpenAIHttpConsumer.as_asgi()
# WebSocket inference authenticates with its bearer key (no session); the dashboard route
# carries its own session and Origin checks (fleet/routing.py).
application = ProtocolTypeRouter(
    {
        "http": URLRouter(
            [*(path(route.removeprefix("/"), inference_http) for route in OPENAI_POSTS), re_path(r"", ASGIStaticFilesHandler(django_asgi_app))]
        ),
        "websocket": URLRouter([*inference_sockets, *fleet_sockets]),
    }
)
