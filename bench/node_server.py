"""A bare node for `bench node`: one model behind the node's internal HTTP API, no gateway, no database."""

import argparse
import asyncio
import logging
import os
from pathlib import Path

from aiohttp import web

from inference.node.engine import ModelSpec, ModelWorker
from inference.node.server import NodeApp


async def serve(args: argparse.Namespace) -> None:
    spec = ModelSpec(
        name="bench", path=Path(args.model), n_ctx=args.n_ctx, embeddings=False, n_threads=args.threads, slots=args.slots or None
    )
    worker = ModelWorker(spec, queue_depth=args.queue_depth)
    await asyncio.to_thread(worker.load)
    runner = web.AppRunner(NodeApp(name="bench", token=os.environ["BENCH_NODE_TOKEN"], workers={"bench": worker}).build(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--slots", type=int, default=0)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--queue-depth", type=int, default=64)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
