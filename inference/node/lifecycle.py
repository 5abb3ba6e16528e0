"""Lifecycle work inside a node process, run by the node's Celery tasks (models_registry.tasks)."""

import logging
import threading
import time
from pathlib import Path

from django.conf import settings

from models_registry import services
from models_registry.models import Deployment
from models_registry.tasks import TransientLoadError

from .engine import ModelSpec

logger = logging.getLogger(__name__)

_current = None
_lock = threading.Lock()


def set_runtime(runtime: object | None) -> None:
    global _current
    _current = runtime


def _runtime():  # type: ignore[no-untyped-def]
    if _current is None:
        raise TransientLoadError("this node's runtime is not up yet")
    return _current


def spec_of(deployment: Deployment, *, n_threads: int | None) -> ModelSpec:
    model = deployment.model
    return ModelSpec(name=model.name, path=Path(model.file.path), n_ctx=model.n_ctx, embeddings=model.embeddings, n_threads=n_threads)


class _Progress:
    """Load progress by elapsed time against an estimate from the file size (llama.cpp reports none), capped at 95 %."""

    BYTES_PER_SECOND = 150 * 1024 * 1024

    def __init__(self, deployment: Deployment) -> None:
        self.deployment_id = deployment.pk
        factor = 2 if deployment.model.embeddings else 1
        self.expected = max(deployment.model.file.size_bytes * factor / self.BYTES_PER_SECOND, 0.5)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self.stop.wait(0.5):
            done = min(95, 5 + int(90 * (time.monotonic() - started) / self.expected))
            services.report_progress(deployment_id=self.deployment_id, progress=done)

    def __enter__(self) -> "_Progress":
        services.report_progress(deployment_id=self.deployment_id, progress=5)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def load_deployment(*, deployment_id: int) -> None:
    """Load into this process: LOADING -> READY, or FAILED with the reason."""
    runtime = _runtime()
    with _lock:
        deployment = services.start_loading(deployment_id=deployment_id)
        if deployment is None:
            return
        try:
            with _Progress(deployment):
                runtime.load_model(spec_of(deployment, n_threads=runtime.n_threads))
        except Exception as exc:
            logger.exception("Load of %s failed", deployment.model.name, extra={"deployment": deployment_id})
            services.finish_loading(deployment_id=deployment_id, error=f"{type(exc).__name__}: {exc}")
            return
        services.finish_loading(deployment_id=deployment_id)


def unload_deployment(*, deployment_id: int) -> None:
    """Stop taking requests, let in-flight ones finish, free the model: UNLOADED."""
    runtime = _runtime()
    deployment = Deployment.objects.select_related("model").filter(pk=deployment_id).first()
    if deployment is None or deployment.desired != Deployment.Desired.UNLOADED:
        return
    with _lock:
        # Gateways stop routing within a refresh of their routing table; until then the model still serves.
        time.sleep(settings.AXS_ROUTING_REFRESH * 2)
        runtime.unload_model(deployment.model.name)
        services.finish_unloading(deployment_id=deployment_id)


def reload_deployment(*, deployment_id: int) -> None:
    """Load a fresh instance beside the serving one, swap, then retire the old one after its requests."""
    runtime = _runtime()
    deployment = Deployment.objects.select_related("model__file").filter(pk=deployment_id).first()
    if deployment is None or deployment.state != Deployment.State.READY:
        return
    with _lock:
        try:
            runtime.reload_model(spec_of(deployment, n_threads=runtime.n_threads))
        except Exception as exc:
            logger.exception("Reload of %s failed; the old instance keeps serving", deployment.model.name)
            services.finish_reloading(deployment_id=deployment_id, error=f"{type(exc).__name__}: {exc}")
            return
        services.finish_reloading(deployment_id=deployment_id)
