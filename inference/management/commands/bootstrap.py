from django.core.management.base import BaseCommand

from axserving import bootstrap
from models_registry.services import register_bundled_model


class Command(BaseCommand):
    help = "Create the database if missing, migrate, and register the bundled model (what `serve` does first)."

    def handle(self, *args: object, **options: object) -> None:
        bootstrap.ensure_database()
        bootstrap.migrate()
        model = register_bundled_model(progress=True)
        self.stdout.write(f"ready: database migrated, model {model.name} registered")
