from django.db import models


class Node(models.Model):
    """A machine running `runnode` (or the all-in-one's embedded node)."""

    class Status(models.TextChoices):
        STARTING = "starting"
        READY = "ready"
        DRAINING = "draining"
        OFFLINE = "offline"

    name = models.CharField(max_length=100, unique=True)
    address = models.URLField(help_text="Base URL of the node's internal endpoint.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.STARTING)
    drain_requested = models.BooleanField(default=False, help_text="Set by an operator; the node keeps it across restarts.")
    started_at = models.DateTimeField()
    last_heartbeat = models.DateTimeField()
    inflight = models.PositiveIntegerField(default=0)
    queued = models.PositiveIntegerField(default=0)
    slots = models.PositiveIntegerField(default=1, help_text="Requests the node decodes at once.")
    telemetry = models.JSONField(default=dict, blank=True, help_text="The last heartbeat's figures.")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
