"""The all-in-one: gateway and one local node in one process, on the bundled model."""

import logging
import os
import secrets
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from axserving import bootstrap
from axserving.access.models import ApiKey
from axserving.access.services import create_api_key
from inference.gateway import run_gateway
from inference.node.registrar import DirectRegistrar
from inference.node.runtime import NodeRuntime
from models_registry.services import register_bundled_model

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Start the all-in-one (gateway + local node with the bundled model)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--node-name", default=os.environ.get("AXS_NODE_NAME", "local"))
        parser.add_argument("--node-port", type=int, default=int(os.environ.get("AXS_NODE_PORT", "0")), help="0 = any free port")

    def step(self, message: str) -> float:
        self.stdout.write(f"==> {message}")
        self.stdout.flush()
        return time.monotonic()

    def handle(self, *args: object, **options: object) -> None:
        host, port = str(options["host"]), int(options["port"])  # type: ignore[call-overload]
        engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        self.step(f"Database: {engine} ({settings.DATABASES['default']['NAME']}); Redis: {settings.REDIS_URL or 'not reachable, in-memory fallbacks'}")
        bootstrap.ensure_database()
        t = self.step("Applying migrations")
        bootstrap.migrate()
        self.stdout.write(f"    done in {time.monotonic() - t:.1f}s")
        self.step("Registering the bundled model")
        model = register_bundled_model(progress=True)
        self.stdout.write(f"    {model.name} (alias {', '.join(model.aliases)}) -> {model.file.path} [{model.file.sha256[:12]}]")

        if not ApiKey.objects.exists():
            _, secret = create_api_key(name="first key", scopes=["inference", "admin", "metrics"], actor="serve")
            self.stdout.write(self.style.WARNING("\n    Your first API key (shown once, store it now):\n"))
            self.stdout.write(f"        {secret}\n")

        if not settings.AXS_NODE_TOKEN:
            settings.AXS_NODE_TOKEN = secrets.token_urlsafe(32)  # embedded node: a fresh shared secret per run
        runtime = NodeRuntime(
            name=str(options["node_name"]),
            host="127.0.0.1",
            port=int(options["node_port"]),  # type: ignore[call-overload]
            token=settings.AXS_NODE_TOKEN,
            models=[model.name],
            registrar=DirectRegistrar(),
            n_threads=settings.AXS_N_THREADS or None,
            # The all-in-one is its own control plane: it also runs the default queue and beat.
            lifecycle_queues=[f"node.{options['node_name']}", "celery"],
            embedded_beat=True,
        )
        t = self.step(f"Loading {model.name} into the local node ({model.file.size_bytes / 1e6:.0f} MB) and warming it up")
        runtime.start_in_thread()
        self.stdout.write(f"    ready in {time.monotonic() - t:.1f}s")

        base = f"http://{host}:{port}"
        self.stdout.write(
            self.style.SUCCESS(f"\naxserving is up: {base}/v1 (OpenAI API), {base}/admin/ (admin), {base}/health\n")
            + "    new API key:      .venv/bin/python manage.py keys create NAME\n"
            + "    first admin user: .venv/bin/python manage.py createsuperuser\n"
            + "    stop:             Ctrl-C\n"
        )
        self.stdout.flush()
        try:
            run_gateway(host=host, port=port)
        finally:
            self.stdout.write("Stopping the local node…")
            runtime.stop()
