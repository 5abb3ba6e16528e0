from django.core.management.base import BaseCommand, CommandParser

from axserving.access.models import ApiKey, Scope
from axserving.access.services import create_api_key


class Command(BaseCommand):
    help = "Manage API keys: `keys create NAME` prints the new secret (alone on stdout); `keys list`."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="create a key and print its secret once")
        create.add_argument("name")
        create.add_argument("--scope", action="append", choices=Scope.values, help="repeatable; default inference")
        sub.add_parser("list", help="list keys (prefix only)")

    def handle(self, *args: object, **options: object) -> None:
        if options["action"] == "create":
            _, secret = create_api_key(name=str(options["name"]), scopes=options["scope"] or None, actor="cli")  # type: ignore[arg-type]
            self.stdout.write(secret)
            return
        for key in ApiKey.objects.all():
            state = "revoked" if key.revoked_at else "active"
            self.stdout.write(f"{key.pk}\t{key.prefix}…\t{key.name}\t{','.join(key.scopes)}\t{state}")
