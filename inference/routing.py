from django.urls import path

from . import consumers

websocket_urlpatterns = [path("v1/realtime/completions", consumers.RealtimeCompletionsConsumer.as_asgi())]
