"""Run the gateway (Daphne) with a graceful stop: fail readiness, finish in-flight, exit."""

import asyncio
import logging
import signal
import time
from http import HTTPStatus
from typing import Any

from django.conf import settings

from axserving.lifecycle import gateway

logger = logging.getLogger(__name__)


def _lean_daphne() -> None:
    """Drop two things Daphne inherits from Twisted that cost the gateway CPU on every request for nothing.

    - Parsing each POST's Content-Type for form fields, through the stdlib email package (~6 % of
      the CPU per request in a profile, docs/benchmarks.md): ASGI applications read the raw body.
    - Formatting a combined-log access line into Twisted's legacy log, which nothing reads
      (~1.3 %): Daphne's own access log (its verbosity) and our metrics are what operators read.

    One factory subclass does both; Server.run builds its factory from daphne.server's name.
    """
    from daphne import http_protocol, server

    if getattr(server.HTTPFactory, "lean", False):
        return

    class WebRequest(http_protocol.WebRequest):  # type: ignore[misc,name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, parsePOSTFormSubmission=False, **kwargs)

    class HTTPFactory(http_protocol.HTTPFactory):  # type: ignore[misc,name-defined]
        lean = True

        def buildProtocol(self, addr: Any) -> Any:  # noqa: N802  (Twisted's name)
            protocol = super().buildProtocol(addr)
            protocol.requestFactory = WebRequest
            return protocol

        def log(self, request: Any) -> None:
            pass

    server.HTTPFactory = HTTPFactory


def _reason_phrases() -> None:
    """Give Twisted the reason phrases it lacks (429, 422, 451...): its status line says "Unknown Status" for them."""
    from twisted.web import http as twisted_http

    for status in HTTPStatus:
        twisted_http.RESPONSES.setdefault(status.value, status.phrase.encode("ascii"))


def run_gateway(*, host: str, port: int) -> None:
    """Serve axserving.asgi on host:port until SIGINT/SIGTERM, then drain (bounded) and return."""
    from daphne.endpoints import build_endpoint_description_strings
    from daphne.server import Server
    from twisted.internet import reactor

    from axserving.asgi import application

    _lean_daphne()
    _reason_phrases()
    server = Server(
        application=application,
        endpoints=build_endpoint_description_strings(host=host, port=port),
        signal_handlers=False,
        verbosity=0,
        application_close_timeout=10,
    )
    deadline: list[float] = []

    def wait_for_inflight() -> None:
        if gateway.inflight <= 0 or time.monotonic() > deadline[0]:
            logger.info("Gateway stopping (%d request(s) still in flight)", max(gateway.inflight, 0))
            reactor.stop()  # type: ignore[attr-defined]
            return
        reactor.callLater(0.1, wait_for_inflight)  # type: ignore[attr-defined]

    def begin_drain() -> None:
        if deadline:  # a second signal: stop now
            reactor.stop()  # type: ignore[attr-defined]
            return
        gateway.draining = True
        deadline.append(time.monotonic() + settings.AXS_SHUTDOWN_GRACE)
        logger.info("Gateway draining: %d request(s) in flight", gateway.inflight)
        wait_for_inflight()

    def on_signal(signum: int, frame: Any) -> None:
        reactor.callFromThread(begin_drain)  # type: ignore[attr-defined]

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server.run()
    _close_node_client()


def _close_node_client() -> None:
    """Close the pooled client to nodes on the loop Daphne ran (stopped, not closed), so its connections end cleanly."""
    from inference import client

    loop = asyncio.get_event_loop()
    if not loop.is_closed() and not loop.is_running():
        loop.run_until_complete(client.aclose())
