"""A node process's life: load models, serve the internal endpoint, register and heartbeat."""

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

from aiohttp import web
from django.conf import settings

from fleet import services as fleet_services
from fleet.models import Node
from models_registry import services as registry_services
from models_registry.models import Deployment

from .engine import ModelSpec, ModelWorker
from .server import NodeApp

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class LoadableModel:
    model_id: int
    spec: ModelSpec


class NodeRuntime:
    """Hosts models and their HTTP endpoint on its own event loop (its own thread when embedded)."""

    def __init__(self, *, name: str, host: str, port: int, token: str, models: list[LoadableModel], advertise: str | None = None):
        self.name = name
        self.host = host
        self.port = port
        self.address = advertise or f"http://{host}:{port}"
        self.models = models
        self.workers = {m.spec.name: ModelWorker(m.spec, queue_depth=settings.AXS_NODE_QUEUE_DEPTH) for m in models}
        self.app = NodeApp(name=name, token=token, workers=self.workers)
        self.node_id: int | None = None
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------

    def start_in_thread(self) -> None:
        """Run the node on a background thread; returns once it serves (or failed to)."""
        self._thread = threading.Thread(target=self._thread_main, name=f"node-{self.name}", daemon=True)
        self._thread.start()
        self.ready.wait()
        if self.failed:
            raise self.failed

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(timeout=30)

    def _thread_main(self) -> None:
        try:
            asyncio.run(self.serve())
        except BaseException as exc:  # surfaced to start_in_thread's caller
            self.failed = exc
            self.ready.set()

    async def serve(self) -> None:
        """Register, load every model, serve and heartbeat until stopped; deregister on the way out."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = web.AppRunner(self.app.build(), handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        node = await asyncio.to_thread(fleet_services.register_node, name=self.name, address=self.address)
        self.node_id = node.pk
        try:
            for model in self.models:
                await self._load(model)
            await asyncio.to_thread(self._beat)
            self.ready.set()
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=settings.AXS_HEARTBEAT_INTERVAL)
                except TimeoutError:
                    await asyncio.to_thread(self._beat)
        finally:
            self.app.draining = True
            await asyncio.to_thread(fleet_services.deregister_node, node_id=node.pk)
            await runner.cleanup()
            for worker in self.workers.values():
                await asyncio.to_thread(worker.stop)

    async def _load(self, model: LoadableModel) -> None:
        assert self.node_id is not None
        await asyncio.to_thread(
            registry_services.set_deployment_state, model_id=model.model_id, node_id=self.node_id, state=Deployment.State.LOADING
        )
        started = time.monotonic()
        try:
            await asyncio.to_thread(self.workers[model.spec.name].load)
        except Exception as exc:
            logger.exception("Loading %s failed", model.spec.name)
            await asyncio.to_thread(
                registry_services.set_deployment_state,
                model_id=model.model_id,
                node_id=self.node_id,
                state=Deployment.State.FAILED,
                error=str(exc),
            )
            raise
        await asyncio.to_thread(
            registry_services.set_deployment_state,
            model_id=model.model_id,
            node_id=self.node_id,
            state=Deployment.State.READY,
            progress=100,
        )
        logger.info("Loaded %s on %s in %.1fs", model.spec.name, self.name, time.monotonic() - started)

    def _beat(self) -> None:
        assert self.node_id is not None
        stats = self.app.stats()
        status = Node.Status.DRAINING if self.app.draining else Node.Status.READY
        fleet_services.heartbeat_node(node_id=self.node_id, status=status, inflight=stats["inflight"], queued=stats["queued"])
