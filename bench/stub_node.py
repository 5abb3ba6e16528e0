"""A node with no model: answers the internal inference API at once, so only the gateway is timed.

Registers and heartbeats through a gateway like a real node. For benchmarks and fleet
measurements only (`bench gateway`, `bench fleet`, `bench soak`); `--token-delay` makes it generate
slowly, and like a real node it serves at most `--slots` requests at once (the rest wait their turn).
"""

import argparse
import asyncio
import time

import aiohttp
import orjson
from aiohttp import web

CHUNKS = 16


def completion(model: str, rid: str) -> bytes:
    return orjson.dumps(
        {
            "id": f"chatcmpl-{rid}", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * CHUNKS}, "logprobs": None, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 12 + CHUNKS},
        }
    )


def chunk(model: str, rid: str, text: str | None, finish: str | None = None) -> bytes:
    delta = {"content": text} if text is not None else {}
    body = {
        "id": f"chatcmpl-{rid}", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


class Stub:
    def __init__(self, name: str, token_delay: float, slots: int) -> None:
        self.name = name
        self.token_delay = token_delay
        self.slots = asyncio.Semaphore(slots)
        self.inflight = 0
        self.queued = 0
        self.served = 0
        self.waited = 0  # requests that found every slot busy: the dispatcher sent them here anyway
        self.cancelled = 0  # streams whose reader (the gateway) went away before the end

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        rid = request.headers.get("X-Request-ID", "x")
        model = body.get("model", "m")
        self.served += 1
        if self.slots.locked():
            self.waited += 1
        self.queued += 1
        try:
            await self.slots.acquire()
        finally:
            self.queued -= 1
        self.inflight += 1
        try:
            if not body.get("stream"):
                if self.token_delay:
                    await asyncio.sleep(self.token_delay * CHUNKS)
                return web.Response(body=completion(model, rid), content_type="application/json")
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            try:
                for _ in range(CHUNKS):
                    if self.token_delay:
                        await asyncio.sleep(self.token_delay)
                    await response.write(chunk(model, rid, "word "))
                await response.write(chunk(model, rid, None, "length"))
                usage = {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 12 + CHUNKS}
                await response.write(b": usage " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n")
                await response.write_eof()
            except ConnectionResetError:
                self.cancelled += 1  # what a real node does here: stop generating
            return response
        finally:
            self.inflight -= 1
            self.slots.release()

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"served": self.served, "waited": self.waited, "cancelled": self.cancelled, "inflight": self.inflight})


async def serve(*, name: str, port: int, gateway: str, token: str, models: list[str], token_delay: float, slots: int) -> None:
    stub = Stub(name, token_delay, slots)
    app = web.Application()
    app.router.add_post("/internal/v1/chat/completions", stub.chat)
    app.router.add_post("/internal/v1/completions", stub.chat)
    app.router.add_get("/internal/stats", stub.stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        reg = {"name": name, "address": f"http://127.0.0.1:{port}", "models": models, "slots": slots}
        async with http.post(f"{gateway}/internal/nodes/register", json=reg) as r:
            node_id = (await r.json())["id"]
        while True:
            beat = {
                "status": "ready",
                "telemetry": {"at": time.time(), "inflight": stub.inflight, "queued": stub.queued, "slots": slots},
                "models": {model: {"state": "ready", "last_used": time.time()} for model in models},
            }
            async with http.post(f"{gateway}/internal/nodes/{node_id}/heartbeat", json=beat) as r:
                await r.read()
            await asyncio.sleep(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--model", default="smollm2", help="model ids it serves, comma-separated")
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--slots", type=int, default=64)
    a = parser.parse_args()
    asyncio.run(serve(name=a.name, port=a.port, gateway=a.gateway, token=a.token, models=a.model.split(","), token_delay=a.token_delay, slots=a.slots))


if __name__ == "__main__":
    main()
