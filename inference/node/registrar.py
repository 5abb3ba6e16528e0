"""How a node tells the fleet about itself: straight through the services (embedded node) or
over HTTP to a gateway's internal endpoints (a node on another machine). Same calls, two wirings."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson
from asgiref.sync import sync_to_async


@dataclass(frozen=True, slots=True)
class ModelToLoad:
    model_id: int
    name: str
    path: Path
    n_ctx: int
    embeddings: bool


class NodeGone(Exception):
    """The fleet no longer knows this node (swept or removed): register again."""


class Registrar(Protocol):
    async def register(self, *, name: str, address: str, models: list[str], slots: int) -> tuple[int, list[ModelToLoad]]: ...

    async def heartbeat(self, *, node_id: int, status: str, telemetry: dict[str, Any], models: dict[str, dict[str, Any]]) -> None: ...

    async def deregister(self, *, node_id: int) -> None: ...


def _to_load(model: Any) -> ModelToLoad:
    return ModelToLoad(
        model_id=model.pk, name=model.name, path=Path(model.file.path), n_ctx=model.n_ctx, embeddings=model.embeddings
    )


class DirectRegistrar:
    """For a node that shares the gateway's database (the all-in-one)."""

    async def register(self, *, name: str, address: str, models: list[str], slots: int) -> tuple[int, list[ModelToLoad]]:
        from fleet import services

        def run() -> tuple[int, list[ModelToLoad]]:
            node, wanted = services.register_node(name=name, address=address, models=models, slots=slots)
            return node.pk, [_to_load(m) for m in wanted]

        return await sync_to_async(run, thread_sensitive=False)()

    async def heartbeat(self, *, node_id: int, status: str, telemetry: dict[str, Any], models: dict[str, dict[str, Any]]) -> None:
        from fleet import services
        from fleet.errors import NodeNotFound

        try:
            await sync_to_async(services.heartbeat_node, thread_sensitive=False)(
                node_id=node_id, status=status, telemetry=telemetry, models=models
            )
        except NodeNotFound:
            raise NodeGone() from None

    async def deregister(self, *, node_id: int) -> None:
        from fleet import services

        await sync_to_async(services.deregister_node, thread_sensitive=False)(node_id=node_id)


class HttpRegistrar:
    """For a node on its own machine: the gateway's `/internal/nodes/...` endpoints, with the node token."""

    def __init__(self, *, gateway: str, token: str):
        self.gateway = gateway.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self.headers, timeout=aiohttp.ClientTimeout(total=10))
        return self._session

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self._http().post(f"{self.gateway}{path}", data=orjson.dumps(body)) as response:
            data = await response.read()
            if response.status == 404:
                raise NodeGone()
            if response.status >= 400:
                raise RuntimeError(f"gateway answered {response.status}: {data[:300]!r}")
            return orjson.loads(data) if data else {}

    async def register(self, *, name: str, address: str, models: list[str], slots: int) -> tuple[int, list[ModelToLoad]]:
        out = await self._post("/internal/nodes/register", {"name": name, "address": address, "models": models, "slots": slots})
        loads = [ModelToLoad(m["id"], m["name"], Path(m["path"]), m["n_ctx"], m["embeddings"]) for m in out["models"]]
        return int(out["id"]), loads

    async def heartbeat(self, *, node_id: int, status: str, telemetry: dict[str, Any], models: dict[str, dict[str, Any]]) -> None:
        await self._post(f"/internal/nodes/{node_id}/heartbeat", {"status": status, "telemetry": telemetry, "models": models})

    async def deregister(self, *, node_id: int) -> None:
        try:
            await self._post(f"/internal/nodes/{node_id}/deregister", {})
        finally:
            if self._session is not None:
                await self._session.close()
