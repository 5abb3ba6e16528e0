"""A gateway without a local node: routes to the fleet's nodes."""

import os

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from inference.gateway import run_gateway


class Command(BaseCommand):
    help = "Run a gateway (OpenAI API, control API, admin) routing to registered nodes; SIGTERM drains it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))

    def handle(self, *args: object, **options: object) -> None:
        if not settings.AXS_NODE_TOKEN:
            self.stderr.write("AXS_NODE_TOKEN is not set: nodes cannot register through this gateway nor be called by it.")
        self.stdout.write(f"==> Gateway on http://{options['host']}:{options['port']}")
        self.stdout.flush()
        run_gateway(host=str(options["host"]), port=int(options["port"]))  # type: ignore[call-overload]
