from django.core.management.base import BaseCommand, CommandError, CommandParser

from axserving.errors import ApiError
from fleet import selectors, services
from fleet.models import Node


class Command(BaseCommand):
    help = "Fleet nodes: list, drain NAME, undrain NAME, remove NAME [--force], sweep."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list")
        for action in ("drain", "undrain", "remove"):
            p = sub.add_parser(action)
            p.add_argument("name")
            if action == "remove":
                p.add_argument("--force", action="store_true")
        sub.add_parser("sweep", help="mark nodes with stopped heartbeats offline")

    def handle(self, *args: object, **options: object) -> None:
        action = options["action"]
        if action == "list":
            for node in selectors.list_nodes():
                self.stdout.write(f"{node.pk}\t{node.name}\t{selectors.node_state(node)}\t{node.address}\tinflight={node.inflight}")
            return
        if action == "sweep":
            self.stdout.write(f"{services.sweep_nodes()} node(s) marked offline")
            return
        node = Node.objects.filter(name=options["name"]).first()
        if node is None:
            raise CommandError(f"No node named {options['name']}.")
        try:
            if action == "drain":
                services.drain_node(node_id=node.pk, actor="cli")
            elif action == "undrain":
                services.undrain_node(node_id=node.pk, actor="cli")
            else:
                services.remove_node(node_id=node.pk, actor="cli", force=bool(options["force"]))
        except ApiError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"{action}: {node.name}")
