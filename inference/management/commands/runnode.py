"""A node: loads models into this process and serves them to gateways (one per machine)."""

import asyncio
import os
import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.node.registrar import DirectRegistrar, HttpRegistrar, Registrar
from inference.node.runtime import NodeRuntime


class Command(BaseCommand):
    help = "Run a node: register with the fleet, load models, serve gateways, heartbeat; SIGTERM drains and deregisters."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", default=os.environ.get("AXS_NODE_NAME"), help="unique node name (AXS_NODE_NAME)")
        parser.add_argument("--listen", default=os.environ.get("AXS_NODE_LISTEN", "127.0.0.1:9101"), help="host:port to serve on")
        parser.add_argument("--advertise", default=os.environ.get("AXS_NODE_ADVERTISE"), help="URL gateways use to reach this node")
        parser.add_argument(
            "--gateway",
            default=os.environ.get("AXS_GATEWAY_URL"),
            help="register and heartbeat through this gateway (AXS_GATEWAY_URL); without it, straight into the database",
        )
        parser.add_argument(
            "--model",
            action="append",
            default=None,
            help="model id to load, repeatable (AXS_NODE_MODELS, comma-separated; default smollm2)",
        )
        parser.add_argument("--empty", action="store_true", help="start with no model; load them later (models load)")

    def handle(self, *args: object, **options: object) -> None:
        name = options["name"]
        if not name:
            raise CommandError("A node needs a name: --name or AXS_NODE_NAME.")
        if not settings.AXS_NODE_TOKEN:
            raise CommandError("Set AXS_NODE_TOKEN (or AXS_NODE_TOKEN_FILE): gateways and nodes share it.")
        host, _, port = str(options["listen"]).rpartition(":")
        models = [] if options["empty"] else options["model"] or [m for m in os.environ.get("AXS_NODE_MODELS", "smollm2").split(",") if m]
        registrar: Registrar = (
            HttpRegistrar(gateway=str(options["gateway"]), token=settings.AXS_NODE_TOKEN) if options["gateway"] else DirectRegistrar()
        )
        runtime = NodeRuntime(
            name=str(name),
            host=host or "127.0.0.1",
            port=int(port),
            token=settings.AXS_NODE_TOKEN,
            models=list(models),  # type: ignore[arg-type]
            registrar=registrar,
            advertise=options["advertise"],  # type: ignore[arg-type]
            n_threads=settings.AXS_N_THREADS or None,
        )
        self.stdout.write(f"==> Node {name} on {options['listen']}, loading {', '.join(models) or 'nothing'}")  # type: ignore[arg-type]
        self.stdout.flush()
        asyncio.run(self._run(runtime))
        self.stdout.write(f"Node {name} stopped.")

    async def _run(self, runtime: NodeRuntime) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, runtime.request_stop)
        serving = asyncio.create_task(runtime.serve())
        await asyncio.to_thread(runtime.ready.wait)
        if not serving.done():
            self.stdout.write(f"    ready: {', '.join(runtime.workers)}")
            self.stdout.flush()
        await serving
