"""A real node runtime (bundled model, HTTP endpoint, heartbeats) with a registrar that records what it hears."""

import time
from pathlib import Path
from typing import Any

import httpx

from inference.node.registrar import ModelToLoad
from inference.node.runtime import NodeRuntime
from models_registry.services import bundled_model_path

TOKEN = "node-secret"


class RecordingRegistrar:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.beats: list[dict[str, Any]] = []

    async def register(self, *, name: str, address: str, models: list[str], slots: int) -> tuple[int, list[ModelToLoad]]:
        return 1, [ModelToLoad(model_id=1, name="m", path=self.path, n_ctx=512, embeddings=False)]

    async def heartbeat(self, *, node_id: int, status: str, telemetry: dict[str, Any], models: dict[str, dict[str, Any]]) -> None:
        self.beats.append(telemetry)

    async def deregister(self, *, node_id: int) -> None:
        pass


def test_a_node_that_served_a_request_heartbeats_its_decode_rate_and_ttft(settings):
    settings.AXS_HEARTBEAT_INTERVAL = 0.2
    settings.AXS_SHUTDOWN_GRACE = 5
    registrar = RecordingRegistrar(bundled_model_path())
    runtime = NodeRuntime(
        name="n", host="127.0.0.1", port=0, token=TOKEN, models=["m"], registrar=registrar, n_threads=1, lifecycle_queues=[]
    )
    runtime.start_in_thread()
    try:
        idle = registrar.beats[-1]
        body = {"model": "m", "prompt": ["Water boils at"], "max_tokens": 8, "temperature": 0, "logit_bias": {"0": -100, "2": -100}}

        response = httpx.post(f"{runtime.address}/internal/v1/completions", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        served = len(registrar.beats)
        deadline = time.monotonic() + 10
        while len(registrar.beats) <= served and time.monotonic() < deadline:
            time.sleep(0.05)
        beat = registrar.beats[-1]
    finally:
        runtime.stop()

    assert response.status_code == 200
    assert idle["tokens_per_s"] == 0 and idle["ttft_p95_ms"] == 0
    # 8 tokens over the 10 s rate window; the TTFT is the engine's own (queue + prefill).
    assert beat["tokens_per_s"] == 0.8
    assert 0 < beat["ttft_p95_ms"] < 10_000
