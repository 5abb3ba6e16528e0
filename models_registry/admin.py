from django.contrib import admin

from .models import Deployment, ModelFile, RegisteredModel


@admin.register(ModelFile)
class ModelFileAdmin(admin.ModelAdmin):
    list_display = ["path", "sha256", "size_bytes", "created_at"]


@admin.register(RegisteredModel)
class RegisteredModelAdmin(admin.ModelAdmin):
    list_display = ["name", "aliases", "file", "n_ctx", "embeddings"]


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["model", "node", "state", "progress", "updated_at", "error"]
    list_filter = ["state"]
