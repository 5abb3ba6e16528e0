"""The gateway's one pooled HTTP client to nodes (aiohttp), per process and event loop."""

import asyncio

import aiohttp
from django.conf import settings

_session: aiohttp.ClientSession | None = None


def session() -> aiohttp.ClientSession:
    global _session
    loop = asyncio.get_running_loop()
    if _session is None or _session.closed or _session._loop is not loop:  # tests run several loops
        _session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, loop=loop),
            timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=settings.AXS_STREAM_IDLE_TIMEOUT),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
    return _session


async def post(address: str, path: str, body: bytes, *, request_id: str) -> aiohttp.ClientResponse:
    """POST to a node's internal endpoint with the node token; the caller reads and releases."""
    headers = {
        "Authorization": f"Bearer {settings.AXS_NODE_TOKEN}",
        "Content-Type": "application/json",
        "X-Request-ID": request_id,
    }
    return await session().post(f"{address}{path}", data=body, headers=headers)


async def aclose() -> None:
    """Close the pooled session (tests and shutdown)."""
    global _session
    if _session is not None and not _session.closed:
        await _session.close()
    _session = None
