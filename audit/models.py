from django.db import models


class Outcome(models.TextChoices):
    SUCCESS = "success"
    DENIED = "denied"
    FAILED = "failed"


class AuditEvent(models.Model):
    """One append-only record; `hash` covers this record and the previous record's hash.

    Database triggers refuse UPDATE and DELETE (migration 0002); `prev_hash` is unique, so two
    writers can never chain onto the same record.
    """

    created_at = models.DateTimeField(db_index=True)
    actor = models.CharField(max_length=200, db_index=True)
    action = models.CharField(max_length=100, db_index=True)
    target = models.CharField(max_length=200, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.SUCCESS)
    request_id = models.CharField(max_length=128, blank=True, default="")
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    data = models.JSONField(default=dict)
    prev_hash = models.CharField(max_length=64, unique=True)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["id"]
        permissions = [("export_auditevent", "Can export audit events")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target}"


class UsageRecord(models.Model):
    """One inference request as the gateway saw it: who, which model and node, tokens, latency, status."""

    created_at = models.DateTimeField(db_index=True)
    request_id = models.CharField(max_length=128)
    key_id = models.BigIntegerField(null=True, db_index=True)
    project_id = models.BigIntegerField(null=True, db_index=True)
    endpoint = models.CharField(max_length=64)
    model = models.CharField(max_length=200, db_index=True)
    node = models.CharField(max_length=200, blank=True)
    status = models.PositiveSmallIntegerField()
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.FloatField()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.status}"
