"""Keep optional integrations a gateway never uses out of its memory (the RSS target in docs/benchmarks.md).

Some libraries import an optional dependency whenever it is installed:

- Twisted imports pyOpenSSL for TLS endpoints, but a gateway serves plain HTTP and TLS ends at
  the reverse proxy in front of it. pyOpenSSL is installed only because Daphne depends on twisted[tls].
- DRF imports `requests` for its test client. `requests` is installed because gguf needs it,
  and gguf imports it only inside its download helpers.
- DRF imports Pygments for its browsable API's highlighting; the API renders JSON only.
- Django's test utilities, which drf-spectacular imports, import Jinja2. A gateway renders no
  Jinja2 template: nodes use it for chat templates through llama-cpp-python. So it is skipped
  by `rungateway` only, not by the all-in-one `serve`, which runs a node in the same process.

Together they cost each gateway process about 13 MB of resident memory. A `None` entry in
sys.modules makes an import fail, so these libraries treat the dependency as absent.
"""

import sys

UNUSED = {
    "rungateway": ("OpenSSL", "requests", "pygments", "jinja2"),
    "serve": ("OpenSSL", "requests", "pygments"),
}


def skip_unused_imports(argv: list[str]) -> None:
    """Before Django starts a gateway command: mark the unused optional modules as absent (unless already imported)."""
    for name in UNUSED.get(argv[1] if len(argv) > 1 else "", ()):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
