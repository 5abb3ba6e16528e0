from django.db import models


class ModelFile(models.Model):
    """A GGUF file in the catalogue, identified by the SHA-256 of its content."""

    sha256 = models.CharField(max_length=64, unique=True)
    path = models.CharField(max_length=1024)
    size_bytes = models.BigIntegerField()
    mtime = models.FloatField(help_text="File mtime when hashed; a changed mtime means re-hash.")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.path} ({self.sha256[:12]})"


class RegisteredModel(models.Model):
    """A model id clients use (`smollm2`), its file and default load settings."""

    name = models.SlugField(max_length=100, unique=True)
    aliases = models.JSONField(default=list, blank=True)
    file = models.ForeignKey(ModelFile, on_delete=models.PROTECT, related_name="models")
    n_ctx = models.PositiveIntegerField(default=2048)
    embeddings = models.BooleanField(default=True, help_text="Also serve /v1/embeddings (mean pooling).")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Deployment(models.Model):
    """A model on a node: what is wanted and what is."""

    class State(models.TextChoices):
        PENDING = "pending"
        LOADING = "loading"
        READY = "ready"
        UNLOADING = "unloading"
        UNLOADED = "unloaded"
        FAILED = "failed"

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="deployments")
    node = models.ForeignKey("fleet.Node", on_delete=models.CASCADE, related_name="deployments")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    progress = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "node"], name="one_deployment_per_model_node")]

    def __str__(self) -> str:
        return f"{self.model} on {self.node}"
