from datetime import datetime

from django.core.management.base import BaseCommand, CommandError, CommandParser

from axserving.access import selectors, services
from axserving.access.models import Project, Scope
from axserving.errors import ApiError


class Command(BaseCommand):
    help = (
        "Manage API keys: `keys create NAME` prints the new secret (alone on stdout); "
        "`keys list`; `keys revoke ID`; `keys project NAME` creates a project."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="create a key and print its secret once")
        create.add_argument("name")
        create.add_argument("--scope", action="append", choices=Scope.values, help="repeatable; default inference")
        create.add_argument("--project", help="project name (default: the 'default' project)")
        create.add_argument("--model", action="append", help="allowed model, repeatable; default: what the project allows")
        create.add_argument("--expires", type=datetime.fromisoformat, help="ISO 8601 expiry")
        create.add_argument("--rpm", type=int, dest="requests_per_minute")
        create.add_argument("--tpm", type=int, dest="tokens_per_minute")
        create.add_argument("--tpd", type=int, dest="tokens_per_day")
        create.add_argument("--concurrent", type=int, dest="max_concurrent")
        sub.add_parser("list", help="list keys (prefix only)")
        revoke = sub.add_parser("revoke", help="revoke a key on every gateway within a second")
        revoke.add_argument("id", type=int)
        project = sub.add_parser("project", help="create a project")
        project.add_argument("name")

    def handle(self, *args: object, **options: object) -> None:
        try:
            getattr(self, f"_{options['action']}")(options)
        except ApiError as exc:
            raise CommandError(exc.message) from None

    def _create(self, options: dict[str, object]) -> None:
        project_id = None
        if options["project"]:
            project = Project.objects.filter(name=options["project"]).first()
            if project is None:
                raise CommandError(f"No project named {options['project']!r}; create it with `keys project NAME`.")
            project_id = project.pk
        quotas = {name: options[name] for name in ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "max_concurrent")}
        _, secret = services.create_api_key(
            name=str(options["name"]),
            scopes=options["scope"] or None,  # type: ignore[arg-type]
            project_id=project_id,
            allowed_models=options["model"] or None,  # type: ignore[arg-type]
            expires_at=options["expires"],  # type: ignore[arg-type]
            actor="cli",
            **quotas,  # type: ignore[arg-type]
        )
        self.stdout.write(secret)

    def _list(self, options: dict[str, object]) -> None:
        for key in selectors.list_api_keys():
            state = "revoked" if key.revoked_at else "active"
            self.stdout.write(f"{key.pk}\t{key.prefix}…\t{key.name}\t{key.project.name}\t{','.join(key.scopes)}\t{state}")

    def _revoke(self, options: dict[str, object]) -> None:
        key = services.revoke_api_key(key_id=int(options["id"]), actor="cli")  # type: ignore[call-overload]
        self.stdout.write(f"revoked {key.pk} ({key.prefix}…) at {key.revoked_at:%Y-%m-%d %H:%M:%S}")

    def _project(self, options: dict[str, object]) -> None:
        project = services.create_project(name=str(options["name"]), actor="cli")
        self.stdout.write(f"{project.pk}\t{project.name}")
