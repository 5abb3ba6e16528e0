from django.contrib import admin

from .models import ApiKey


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "scopes", "created_at", "expires_at", "revoked_at"]
    readonly_fields = ["prefix", "hashed_secret", "created_at"]
    search_fields = ["name", "prefix"]
