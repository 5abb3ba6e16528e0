from django.db import models


class Scope(models.TextChoices):
    INFERENCE = "inference"
    ADMIN = "admin"
    METRICS = "metrics"


class ApiKey(models.Model):
    """A bearer key. Only the SHA-256 of the secret is stored; the prefix identifies it."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True)
    hashed_secret = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
