"""Keep optional integrations a gateway never uses out of its memory (the RSS target in docs/benchmarks.md).

Some libraries import an optional dependency whenever it is installed:

- Twisted imports pyOpenSSL for TLS endpoints, but a gateway serves plain HTTP and TLS ends at
  the reverse proxy in front of it. pyOpenSSL is installed only because Daphne depends on twisted[tls].
- DRF imports `requests` for its test client. `requests` is installed because gguf needs it,
  and gguf imports it only inside its download helpers.
- DRF imports Pygments for its browsable API's highlighting; the API renders JSON only.

Together they cost each gateway process about 11 MB of resident memory. A `None` entry in
sys.modules makes an import fail, so these libraries treat the dependency as absent.
"""

import sys

UNUSED_BY_GATEWAYS = ("OpenSSL", "requests", "pygments")
GATEWAY_COMMANDS = frozenset({"rungateway", "serve"})


def skip_unused_imports(argv: list[str]) -> None:
    """Before Django starts a gateway command: mark the unused optional modules as absent (unless already imported)."""
    if len(argv) > 1 and argv[1] in GATEWAY_COMMANDS:
        for name in UNUSED_BY_GATEWAYS:
            sys.modules.setdefault(name, None)  # type: ignore[arg-type]
