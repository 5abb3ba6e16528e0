import time

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from axserving.errors import ApiError
from models_registry import selectors, services
from models_registry.models import Deployment


class Command(BaseCommand):
    help = "Model catalogue and lifecycle: register PATH, load ID [--node N] [--wait], unload ID, reload ID, list."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        register = sub.add_parser("register", help="catalogue a GGUF file from an allowed directory")
        register.add_argument("path")
        register.add_argument("--id", help="model id (default: the file name without .gguf)")
        register.add_argument("--n-ctx", type=int)
        register.add_argument("--parallel", type=int)
        register.add_argument("--no-embeddings", action="store_true")
        register.add_argument("--pinned", action="store_true")
        register.add_argument("--idle-ttl", type=int, help="unload after this many idle seconds")
        load = sub.add_parser("load", help="load a model on a node (placement picks one without --node)")
        load.add_argument("id")
        load.add_argument("--node")
        load.add_argument("--wait", action="store_true", help="show progress until ready or failed")
        load.add_argument("--timeout", type=float, default=600)
        for name in ("unload", "reload"):
            sub.add_parser(name).add_argument("id")
        sub.add_parser("list")

    def handle(self, *args: object, **o: object) -> None:
        try:
            getattr(self, f"do_{o['action']}")(o)
        except ApiError as exc:
            raise CommandError(exc.message) from exc

    def do_register(self, o: dict) -> None:  # type: ignore[type-arg]
        from pathlib import Path

        model = services.register_model(
            name=o["id"] or Path(o["path"]).stem.lower().replace(".", "-").replace("_", "-"),
            path=o["path"],
            n_ctx=o["n_ctx"],
            parallel=o["parallel"],
            embeddings=False if o["no_embeddings"] else None,
            pinned=o["pinned"] or None,
            idle_ttl_seconds=o["idle_ttl"],
            actor="cli",
            progress=True,
        )
        f = model.file
        self.stdout.write(f"{model.name}: {f.architecture} {f.parameter_count or 0:,} params {f.quantization} sha256 {f.sha256[:12]}")

    def do_load(self, o: dict) -> None:  # type: ignore[type-arg]
        deployment = services.deploy_model(model_name=o["id"], node_name=o["node"], actor="cli")
        self.stdout.write(f"deployment {deployment.pk}: loading {deployment.model.name} on {deployment.node.name}")
        if not o["wait"]:
            return
        deadline = time.monotonic() + o["timeout"]
        with tqdm(total=100, desc=f"{deployment.model.name} on {deployment.node.name}", unit="%") as bar:
            while deployment.state not in (Deployment.State.READY, Deployment.State.FAILED):
                if time.monotonic() > deadline:
                    raise CommandError(f"still {deployment.state} after {o['timeout']:g}s")
                time.sleep(0.25)
                deployment.refresh_from_db()
                bar.update(max(deployment.progress - bar.n, 0))
            bar.update(100 - bar.n if deployment.state == Deployment.State.READY else 0)
        if deployment.state == Deployment.State.FAILED:
            raise CommandError(f"load failed: {deployment.error}")
        self.stdout.write(f"ready: {deployment.model.name} on {deployment.node.name}")

    def do_unload(self, o: dict) -> None:  # type: ignore[type-arg]
        for d in services.unload_model(model_name=o["id"], actor="cli"):
            self.stdout.write(f"deployment {d.pk}: unloading {d.model.name} from {d.node.name}")

    def do_reload(self, o: dict) -> None:  # type: ignore[type-arg]
        for d in services.reload_model(model_name=o["id"], actor="cli"):
            self.stdout.write(f"deployment {d.pk}: reloading {d.model.name} on {d.node.name}")

    def do_list(self, o: dict) -> None:  # type: ignore[type-arg]
        for model in selectors.list_models().prefetch_related("deployments__node"):
            where = ", ".join(f"{d.node.name}:{d.state}" for d in model.deployments.all()) or "-"
            self.stdout.write(f"{model.name}\t{model.file.quantization}\tn_ctx={model.n_ctx}\t{where}")
