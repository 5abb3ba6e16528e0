"""A node process's life: register, load its models, serve the internal endpoint, heartbeat,
and on stop drain in-flight requests (bounded) and deregister."""

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from django.conf import settings

from . import lifecycle
from .engine import ModelSpec, ModelWorker
from .registrar import ModelToLoad, NodeGone, Registrar
from .server import NodeApp, error_json

logger = logging.getLogger(__name__)


def free_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (0 where there is none)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class NodeRuntime:
    """Hosts models and their HTTP endpoint on its own event loop (its own thread when embedded)."""

    def __init__(
        self,
        *,
        name: str,
        host: str,
        port: int,
        token: str,
        models: list[str],
        registrar: Registrar,
        advertise: str | None = None,
        n_threads: int | None = None,
        lifecycle_queues: list[str] | None = None,
        embedded_beat: bool = False,
    ):
        self.name = name
        self.host = host
        self.port = port
        self.advertise = advertise
        self.model_names = models
        self.registrar = registrar
        self.n_threads = n_threads
        self.workers: dict[str, ModelWorker] = {}
        self.model_states: dict[str, dict[str, Any]] = {}
        self.app = NodeApp(name=name, token=token, workers=self.workers)
        self.node_id: int | None = None
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self._recent: collections.deque[bool] = collections.deque(maxlen=200)  # True = server error
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        # Celery queues this process consumes: its own `node.<name>` for model loads, plus the
        # default queue (and beat) when it is the all-in-one's embedded node.
        self.lifecycle_queues = lifecycle_queues if lifecycle_queues is not None else [f"node.{name}"]
        self.embedded_beat = embedded_beat
        self.started = False  # start-up loads done: ready for traffic and for lifecycle tasks
        self._celery: Any = None

    @property
    def address(self) -> str:
        return self.advertise or f"http://{self.host}:{self.port}"

    # --- embedding in another process ----------------------------------------------------

    def start_in_thread(self) -> None:
        """Run the node on a background thread; returns once every model is ready (or raises)."""
        self._thread = threading.Thread(target=self._thread_main, name=f"node-{self.name}", daemon=True)
        self._thread.start()
        self.ready.wait()
        if self.failed:
            raise self.failed

    def _thread_main(self) -> None:
        try:
            asyncio.run(self.serve())
        except BaseException as exc:  # surfaced to start_in_thread's caller
            self.failed = exc
            self.ready.set()

    def stop(self) -> None:
        """Drain and stop from another thread; waits for the node to deregister."""
        self.request_stop()
        if self._thread:
            self._thread.join(timeout=settings.AXS_SHUTDOWN_GRACE + 10)

    def request_stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)

    # --- the node's life ------------------------------------------------------------------

    @web.middleware
    async def _gatekeeper(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Refuse new work while draining (the gateway retries elsewhere); count server errors."""
        if request.path.startswith("/internal/v1/") and self.app.draining:
            return error_json(503, "This node is draining.", type_="service_unavailable", code="node_draining")
        response = await handler(request)
        if request.path.startswith("/internal/v1/"):
            self._recent.append(response.status >= 500)
        return response

    def telemetry(self) -> dict[str, Any]:
        stats = self.app.stats()
        recent = list(self._recent)
        return {
            "at": time.time(),
            "inflight": stats["inflight"],
            "queued": stats["queued"],
            "slots": stats.get("slots") or max(len(self.workers), 1),
            "free_memory_bytes": free_memory_bytes(),
            "tokens_per_s": stats.get("tokens_per_s", 0.0),
            "ttft_p95_ms": stats.get("ttft_p95_ms", 0.0),
            "error_rate": (sum(recent) / len(recent)) if recent else 0.0,
            "requests": len(recent),
            "max_models": settings.AXS_NODE_MAX_MODELS,
            "memory_budget_bytes": settings.AXS_NODE_MEMORY_BUDGET,
        }

    async def serve(self) -> None:
        """Register, load every model, serve and heartbeat until stopped; then drain and deregister."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = self.app.build()
        app.middlewares.append(self._gatekeeper)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        beats: asyncio.Task[None] | None = None
        try:
            to_load = await self._register()
            beats = asyncio.create_task(self._heartbeats())
            for model in to_load:
                await self._load(model)
            if any(s["state"] == "failed" for s in self.model_states.values()) and not self.workers_ready():
                raise RuntimeError(f"no model could be loaded: {self.model_states}")
            self.started = True
            await self._beat()
            if self.lifecycle_queues:
                self._start_lifecycle_worker()
            self.ready.set()
            await self._stop.wait()
            await self._drain()
        finally:
            lifecycle.set_runtime(None)
            if self._celery is not None:
                self._celery.stop(in_sighandler=False)
            if beats:
                beats.cancel()
            if self.node_id is not None:
                try:
                    await self.registrar.deregister(node_id=self.node_id)
                except Exception:
                    logger.warning("Deregistering %s failed", self.name, exc_info=True)
            await runner.cleanup()
            for worker in self.workers.values():
                await asyncio.to_thread(worker.stop)

    # --- lifecycle, called from the node's Celery worker thread -------------------------------

    def load_model(self, spec: ModelSpec) -> None:
        """Load `spec` into this process unless it already serves it."""
        if spec.name in self.workers and self.workers[spec.name].ready:
            return
        self.model_states[spec.name] = {"state": "loading", "error": ""}
        worker = ModelWorker(spec, queue_depth=settings.AXS_NODE_QUEUE_DEPTH)
        try:
            worker.load()
        except Exception as exc:
            self.model_states[spec.name] = {"state": "failed", "error": str(exc)[:500]}
            raise
        self.workers[spec.name] = worker
        self.model_states[spec.name] = {"state": "ready", "error": ""}

    def unload_model(self, name: str) -> None:
        """Let the model's in-flight and queued requests finish (bounded), then free it."""
        worker = self.workers.get(name)
        if worker is not None:
            self._retire(worker)
            self.workers.pop(name, None)
        self.model_states.pop(name, None)

    def reload_model(self, spec: ModelSpec) -> None:
        """Load a fresh instance while the old one serves, swap them, then retire the old one."""
        fresh = ModelWorker(spec, queue_depth=settings.AXS_NODE_QUEUE_DEPTH)
        fresh.load()
        old = self.workers.get(spec.name)
        self.workers[spec.name] = fresh  # one dict store: each request sees the old or the new instance
        self.model_states[spec.name] = {"state": "ready", "error": ""}
        if old is not None:
            self._retire(old)

    def _retire(self, worker: ModelWorker) -> None:
        deadline = time.monotonic() + settings.AXS_SHUTDOWN_GRACE
        while worker.inflight + worker.queued > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        worker.stop()

    def _busy(self) -> bool:
        stats = self.app.stats()
        return stats["inflight"] + stats["queued"] > 0

    def workers_ready(self) -> bool:
        return any(w.ready for w in self.workers.values())

    def _start_lifecycle_worker(self) -> None:
        """Consume this node's Celery queue on a thread, so loads land in this process."""
        lifecycle.set_runtime(self)
        threading.Thread(target=self._run_lifecycle_worker, name=f"celery-{self.name}", daemon=True).start()

    def _run_lifecycle_worker(self) -> None:
        # Built on its own thread: Celery's Django fixup closes DB connections as the worker
        # starts, which Django refuses to do from an event loop thread.
        from celery.beat import EmbeddedService

        from axserving.celery import app

        self._celery = app.WorkController(
            hostname=f"node.{self.name}@axserving",
            queues=self.lifecycle_queues,
            pool_cls="solo",
            concurrency=1,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel="WARNING",
        )
        if self.embedded_beat:
            EmbeddedService(app, thread=True).start()
        self._celery.start()

    async def _register(self) -> list[ModelToLoad]:
        slots = max(len(self.model_names), 1)
        self.node_id, to_load = await self.registrar.register(
            name=self.name, address=self.address, models=self.model_names, slots=slots
        )
        return to_load

    async def _load(self, model: ModelToLoad) -> None:
        """A start-up load; its outcome reaches the fleet with the next heartbeat."""
        spec = ModelSpec(name=model.name, path=model.path, n_ctx=model.n_ctx, embeddings=model.embeddings, n_threads=self.n_threads)
        started = time.monotonic()
        try:
            await asyncio.to_thread(self.load_model, spec)
        except Exception:
            logger.exception("Loading %s failed", model.name, extra={"model": model.name})
            return
        logger.info("Loaded %s on %s in %.1fs", model.name, self.name, time.monotonic() - started, extra={"model": model.name})

    async def _beat(self) -> None:
        assert self.node_id is not None
        status = "draining" if self.app.draining else ("ready" if self.started else "starting")
        try:
            await self.registrar.heartbeat(node_id=self.node_id, status=status, telemetry=self.telemetry(), models=self._models_report())
        except NodeGone:
            logger.warning("The fleet forgot node %s; registering again", self.name)
            await self._register()
            await self.registrar.heartbeat(node_id=self.node_id, status=status, telemetry=self.telemetry(), models=self._models_report())

    def _models_report(self) -> dict[str, dict[str, Any]]:
        report = {name: dict(state) for name, state in self.model_states.items()}
        for name, worker in list(self.workers.items()):
            if name in report and getattr(worker, "last_used", 0):
                report[name]["last_used"] = worker.last_used
        return report

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(settings.AXS_HEARTBEAT_INTERVAL)
            try:
                await self._beat()
            except Exception:
                logger.warning("Heartbeat from %s failed", self.name, exc_info=True)

    async def _drain(self) -> None:
        """Stop admitting, tell the fleet, and let in-flight requests finish (bounded)."""
        self.app.draining = True
        try:
            await self._beat()
        except Exception:
            logger.warning("Could not report draining", exc_info=True)
        deadline = time.monotonic() + settings.AXS_SHUTDOWN_GRACE
        while self._busy() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
