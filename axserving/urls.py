from django.contrib import admin
from django.urls import include, path

from fleet.views import health
from inference import views as inference

urlpatterns = [
    path("health", health, name="health"),
    path("v1/chat/completions", inference.chat_completions, name="chat-completions"),
    path("v1/completions", inference.completions, name="completions"),
    path("v1/embeddings", inference.embeddings, name="embeddings"),
    path("v1/tokenize", inference.tokenize, name="tokenize"),
    path("v1/detokenize", inference.detokenize, name="detokenize"),
    path("v1/models", inference.models_list, name="models"),
    path("v1/models/<str:model_id>", inference.model_detail, name="model-detail"),
    path("v1/admin/", include("axserving.access.urls")),
    path("admin/", admin.site.urls),
    path("", include("django_prometheus.urls")),
]

handler400 = "axserving.errors.handler400"
handler403 = "axserving.errors.handler403"
handler404 = "axserving.errors.handler404"
handler500 = "axserving.errors.handler500"
