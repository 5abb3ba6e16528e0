"""axserving: the Django project (settings, ASGI routing, Celery app).

The Celery app is loaded on first use rather than here: gateways, which only enqueue lifecycle
tasks now and then, would otherwise carry Celery in memory from the start. `celery -A axserving`
finds it as axserving.celery.app.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "celery_app":
        from .celery import app

        return app
    raise AttributeError(f"module 'axserving' has no attribute {name!r}")
