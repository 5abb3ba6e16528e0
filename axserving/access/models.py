from django.db import models
from django.db.models import Q


class Scope(models.TextChoices):
    INFERENCE = "inference"
    ADMIN = "admin"
    METRICS = "metrics"


class RoutingPolicy(models.TextChoices):
    LEAST_INFLIGHT = "least_inflight"
    ROUND_ROBIN = "round_robin"


class QuotaFields(models.Model):
    """Limits shared by projects and keys; null means unlimited."""

    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_day = models.PositiveIntegerField(null=True, blank=True)
    max_concurrent = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        abstract = True


QUOTA_FIELDS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "max_concurrent")
PROJECT_POLICY_FIELDS = ("allowed_models", "max_tokens_cap", "default_priority", "max_priority")


class Project(QuotaFields):
    """A team: owns API keys, their quotas and the policy every request of its keys obeys."""

    name = models.CharField(max_length=100, unique=True)
    description = models.CharField(max_length=500, blank=True)
    # Empty = every model; otherwise canonical names or aliases.
    allowed_models = models.JSONField(default=list, blank=True)
    max_tokens_cap = models.PositiveIntegerField(null=True, blank=True)
    default_priority = models.SmallIntegerField(default=0)
    max_priority = models.SmallIntegerField(default=0)
    policy_version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(default_priority__lte=models.F("max_priority")), name="project_default_priority_within_max"),
        ]

    def __str__(self) -> str:
        return self.name


class ApiKey(QuotaFields):
    """A bearer key. Only the SHA-256 of the secret is stored; the prefix identifies it."""

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True)
    hashed_secret = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    # Empty = whatever the project allows; otherwise narrows it further.
    allowed_models = models.JSONField(default=list, blank=True)
    created_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class GlobalPolicy(models.Model):
    """The fleet-wide policy (a single row, id=1): routing, admission limits, defaults for projects."""

    routing_policy = models.CharField(max_length=32, choices=RoutingPolicy.choices, default=RoutingPolicy.LEAST_INFLIGHT)
    max_queue_per_model = models.PositiveIntegerField(default=64)
    queue_timeout_seconds = models.FloatField(default=30.0)
    default_max_tokens_cap = models.PositiveIntegerField(null=True, blank=True)
    version = models.PositiveIntegerField(default=1)
    updated_by = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "global policy"
        verbose_name_plural = "global policy"
        constraints = [models.CheckConstraint(condition=Q(queue_timeout_seconds__gt=0), name="global_policy_timeout_positive")]

    def __str__(self) -> str:
        return f"global policy v{self.version}"


GLOBAL_POLICY_FIELDS = ("routing_policy", "max_queue_per_model", "queue_timeout_seconds", "default_max_tokens_cap")


class PolicyVersion(models.Model):
    """One saved version of a policy (project or global): who changed it, what it became, when."""

    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.CASCADE, related_name="policy_versions")
    version = models.PositiveIntegerField()
    data = models.JSONField()
    changed_by = models.CharField(max_length=200)
    changed_at = models.DateTimeField(auto_now_add=True)
    comment = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-changed_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "version"], name="policy_version_unique_per_project"),
            models.UniqueConstraint(
                fields=["version"], condition=Q(project__isnull=True), name="policy_version_unique_global"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project or 'global'} v{self.version}"
