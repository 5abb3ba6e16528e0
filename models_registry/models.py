from django.db import models


class ModelFile(models.Model):
    """A GGUF file in the catalogue, identified by the SHA-256 of its content, with its header facts."""

    sha256 = models.CharField(max_length=64, unique=True)
    path = models.CharField(max_length=1024)
    size_bytes = models.BigIntegerField()
    mtime = models.FloatField(help_text="File mtime when hashed; a changed mtime means re-hash.")
    architecture = models.CharField(max_length=64, blank=True)
    parameter_count = models.BigIntegerField(null=True, blank=True)
    context_length = models.PositiveIntegerField(null=True, blank=True, help_text="Trained context length.")
    quantization = models.CharField(max_length=32, blank=True)
    has_chat_template = models.BooleanField(default=False)
    metadata = models.JSONField(default=dict, blank=True, help_text="Header figures used for memory estimates.")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.path} ({self.sha256[:12]})"


class RegisteredModel(models.Model):
    """A model id clients use (`smollm2`), its file and default load settings."""

    name = models.SlugField(max_length=100, unique=True)
    aliases = models.JSONField(default=list, blank=True)
    file = models.ForeignKey(ModelFile, on_delete=models.PROTECT, related_name="models")
    n_ctx = models.PositiveIntegerField(default=2048)
    parallel = models.PositiveIntegerField(default=1, help_text="Sequence slots of one loaded instance.")
    n_gpu_layers = models.IntegerField(default=0)
    embeddings = models.BooleanField(default=True, help_text="Also serve /v1/embeddings (mean pooling).")
    pinned = models.BooleanField(default=False, help_text="Never evicted for idleness.")
    idle_ttl_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Unload after this long without a request (empty: never)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Deployment(models.Model):
    """A model on a node: what is wanted (desired) and what is (state)."""

    class Desired(models.TextChoices):
        LOADED = "loaded"
        UNLOADED = "unloaded"

    class State(models.TextChoices):
        PENDING = "pending"
        LOADING = "loading"
        READY = "ready"
        UNLOADING = "unloading"
        UNLOADED = "unloaded"
        FAILED = "failed"

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="deployments")
    node = models.ForeignKey("fleet.Node", on_delete=models.CASCADE, related_name="deployments")
    desired = models.CharField(max_length=16, choices=Desired.choices, default=Desired.LOADED)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    progress = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField()
    ready_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "node"], name="one_deployment_per_model_node")]

    def __str__(self) -> str:
        return f"{self.model} on {self.node}"
