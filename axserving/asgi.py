import os

from channels.routing import ProtocolTypeRouter, URLRouter
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "axserving.settings")
django_asgi_app = get_asgi_application()

# The all-in-one has no web server in front of it: serve the admin's static files here.
application = ProtocolTypeRouter({"http": ASGIStaticFilesHandler(django_asgi_app), "websocket": URLRouter([])})
