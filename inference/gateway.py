"""Run the gateway (Daphne) with a graceful stop: fail readiness, finish in-flight, exit."""

import asyncio
import logging
from http import HTTPStatus
import signal
import time
from typing import Any

from django.conf import settings

from axserving.lifecycle import gateway

logger = logging.getLogger(__name__)


def _skip_form_parsing() -> None:
    """Stop Twisted from parsing each POST's Content-Type for form fields that Daphne never reads.

    Twisted does it through the stdlib email package, which cost ~6 % of the gateway's CPU per
    request in a profile (docs/benchmarks.md); ASGI applications read the raw body.
    """
    from daphne import http_protocol

    if getattr(http_protocol.WebRequest, "skips_form_parsing", False):
        return

    class WebRequest(http_protocol.WebRequest):  # type: ignore[misc,name-defined]
        skips_form_parsing = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, parsePOSTFormSubmission=False, **kwargs)

    http_protocol.WebRequest = WebRequest  # HTTPFactory.buildProtocol reads the module's name per connection


def _no_twisted_access_log() -> None:
    """Stop Twisted from formatting an access-log line per request into its legacy log, which nothing reads.

    Daphne's HTTP factory inherits Twisted's: with no log path, Twisted still builds a combined-log
    line per request (header lookups, escaping, a date) and emits it as a log event. Daphne's own
    access log (its verbosity) and our request metrics are what operators read.
    """
    from daphne import http_protocol, server

    if getattr(server.HTTPFactory, "skips_access_log", False):
        return

    class HTTPFactory(http_protocol.HTTPFactory):  # type: ignore[misc,name-defined]
        skips_access_log = True

        def log(self, request: Any) -> None:
            pass

    server.HTTPFactory = HTTPFactory  # Server.run builds its factory from this module's name


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

    _skip_form_parsing()
    _no_twisted_access_log()
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
