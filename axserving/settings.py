"""One env-driven settings module for every role (gateway, node, all-in-one).

Every deploy-varying value comes from the environment (or `NAME_FILE` for secrets).
See docs/configuration.md for the full list and the fallbacks.
"""

import socket
from pathlib import Path
from urllib.parse import urlparse

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.FileAwareEnv()


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=0.3):
            return True
    except OSError:
        return False


DEBUG = env.bool("AXS_DEBUG", default=False)
# The all-in-one runs on a laptop with nothing configured; a fleet sets AXS_SECRET_KEY.
SECRET_KEY = env("AXS_SECRET_KEY", default="axserving-insecure-local-only-set-AXS_SECRET_KEY")
ALLOWED_HOSTS = env.list("AXS_ALLOWED_HOSTS", default=["*"])

# Postgres when DATABASE_URL is set or the local server answers; SQLite otherwise.
_LOCAL_POSTGRES = "postgres://postgres@127.0.0.1:5432/axserving"
DATABASE_URL = env("DATABASE_URL", default="") or (
    _LOCAL_POSTGRES if _reachable(_LOCAL_POSTGRES, 5432) else f"sqlite:///{BASE_DIR / 'var' / 'axserving.sqlite3'}"
)
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"].setdefault("CONN_MAX_AGE", 60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

# Redis when REDIS_URL is set or the local server answers; "" selects the in-memory
# fallbacks, which only make sense for the single-process all-in-one.
_LOCAL_REDIS = "redis://127.0.0.1:6379/0"
REDIS_URL = env("REDIS_URL", default="") or (_LOCAL_REDIS if _reachable(_LOCAL_REDIS, 6379) else "")

# No "daphne" app: gateways start Daphne themselves (inference/gateway.py), so the other processes
# (nodes, Celery workers, management commands) never import Twisted.
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files for /v1/docs, served by the gateway (no CDN offline)
    "django_prometheus",
    "channels",
    "django_filters",
    "axserving.access",
    "audit",
    "fleet",
    "models_registry",
    "inference",
]

MIDDLEWARE = [
    # django-prometheus' pair, without its per-request thread hops (axserving/middleware.py).
    "axserving.middleware.PrometheusBeforeMiddleware",
    "axserving.middleware.RequestIdMiddleware",
    # Django's stock middleware, skipped on API-key paths (/v1/, /internal/, /health, /metrics).
    "axserving.middleware.SecurityMiddleware",
    "axserving.middleware.SessionMiddleware",
    "axserving.middleware.CommonMiddleware",
    "axserving.middleware.CsrfViewMiddleware",
    "axserving.middleware.AuthenticationMiddleware",
    "axserving.middleware.MessageMiddleware",
    "axserving.middleware.XFrameOptionsMiddleware",
    "axserving.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "axserving.urls"
ASGI_APPLICATION = "axserving.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
APPEND_SLASH = False

# Request bodies over this size get 413 (OpenAI envelope).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("AXS_MAX_BODY_BYTES", default=4 * 1024 * 1024)

if REDIS_URL:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}}
    CELERY_BROKER_URL = REDIS_URL
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CELERY_BROKER_URL = "memory://"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_BEAT_SCHEDULE = {
    "sweep-nodes": {"task": "fleet.tasks.sweep_nodes", "schedule": env.float("AXS_SWEEP_INTERVAL", default=10.0)},
    "evict-idle-models": {"task": "models_registry.tasks.evict_idle_models", "schedule": env.float("AXS_EVICT_INTERVAL", default=30.0)},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(BASE_DIR / "var" / "celerybeat-schedule")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_SERIALIZER = "json"

REST_FRAMEWORK = {
    "EXCEPTION_HANDLER": "axserving.errors.drf_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": ["axserving.access.authentication.ApiKeyAuthentication"],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    # `?format=` selects the audit export (csv, jsonl), not a DRF renderer.
    "URL_FORMAT_OVERRIDE": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "axserving",
    "VERSION": "0.1.0",
    "DESCRIPTION": (
        "An offline, OpenAI-compatible gateway and its control API. Send an API key as "
        "`Authorization: Bearer <key>`: the `inference` scope for the OpenAI routes, `admin` for the "
        "control API. Every error body is the OpenAI envelope `{\"error\": {message, type, param, code}}`. "
        "Not shown here (OpenAPI describes HTTP only): the WebSocket route `/v1/realtime/completions`."
    ),
    # The OpenAI request shapes are pydantic models, whose JSON Schema is OpenAPI 3.1's dialect.
    "OAS_VERSION": "3.1.0",
    "SCHEMA_PATH_PREFIX": r"/v1",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "PREPROCESSING_HOOKS": ["axserving.openapi.add_shared_path_views"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "axserving.openapi.add_non_drf_paths",
        "axserving.openapi.add_error_responses",
    ],
    "APPEND_COMPONENTS": {
        "securitySchemes": {
            "NodeToken": {"type": "http", "scheme": "bearer", "description": "The fleet's node token (AXS_NODE_TOKEN), never an API key."}
        }
    },
}

# Node <-> gateway shared secret. Required for a fleet; the all-in-one generates one per run.
AXS_NODE_TOKEN = env("AXS_NODE_TOKEN", default="")
# Heartbeats: a node silent for AXS_NODE_TTL seconds is unhealthy (no traffic); after
# AXS_NODE_OFFLINE_AFTER it is offline.
AXS_HEARTBEAT_INTERVAL = env.float("AXS_HEARTBEAT_INTERVAL", default=2.0)
AXS_NODE_TTL = env.float("AXS_NODE_TTL", default=6.0)
AXS_NODE_OFFLINE_AFTER = env.float("AXS_NODE_OFFLINE_AFTER", default=20.0)
# Dispatch: least_inflight | weighted_round_robin | model_affinity | scored, and per-model overrides
# as "model=policy,model2=policy".
AXS_DISPATCH_POLICY = env("AXS_DISPATCH_POLICY", default="least_inflight")
AXS_DISPATCH_POLICY_BY_MODEL = env.dict("AXS_DISPATCH_POLICY_BY_MODEL", default={})
# A node failing this many requests in a row gets no traffic from any gateway for AXS_EJECT_SECONDS.
AXS_EJECT_AFTER_FAILURES = env.int("AXS_EJECT_AFTER_FAILURES", default=5)
AXS_EJECT_SECONDS = env.float("AXS_EJECT_SECONDS", default=30.0)
# Admission: per model and gateway process, at most this many requests wait for a slot, each at
# most AXS_ADMISSION_TIMEOUT seconds.
AXS_ADMISSION_QUEUE = env.int("AXS_ADMISSION_QUEUE", default=64)
AXS_ADMISSION_TIMEOUT = env.float("AXS_ADMISSION_TIMEOUT", default=30.0)
# A draining process finishes its in-flight requests for at most this long before exiting.
AXS_SHUTDOWN_GRACE = env.float("AXS_SHUTDOWN_GRACE", default=30.0)
# How stale the gateway's in-process routing table may be.
AXS_ROUTING_REFRESH = env.float("AXS_ROUTING_REFRESH", default=1.0)
# How long a verified API key stays in the process cache.
AXS_KEY_CACHE_SECONDS = env.float("AXS_KEY_CACHE_SECONDS", default=30.0)
# A stream with no byte from the node for this long ends with an error event.
AXS_STREAM_IDLE_TIMEOUT = env.float("AXS_STREAM_IDLE_TIMEOUT", default=120.0)
# Default context length and queue depth for models the node loads.
AXS_DEFAULT_N_CTX = env.int("AXS_DEFAULT_N_CTX", default=2048)
AXS_NODE_QUEUE_DEPTH = env.int("AXS_NODE_QUEUE_DEPTH", default=64)
AXS_N_THREADS = env.int("AXS_N_THREADS", default=0)
# Where model files may be registered from (the bundled model's directory is always allowed).
AXS_MODEL_DIRS = env.list("AXS_MODEL_DIRS", default=[str(BASE_DIR / "var" / "models")])
# A node's own limits for placement: 0 = none (free memory still applies).
AXS_NODE_MAX_MODELS = env.int("AXS_NODE_MAX_MODELS", default=0)
AXS_NODE_MEMORY_BUDGET = env.int("AXS_NODE_MEMORY_BUDGET", default=0)

# GET /metrics asks for a bearer key with the `metrics` (or `admin`) scope when set.
AXS_METRICS_REQUIRE_KEY = env.bool("AXS_METRICS_REQUIRE_KEY", default=False)
# Sequences a node decodes together per model (continuous batching); 0 = a few per core.
AXS_NODE_SLOTS = env.int("AXS_NODE_SLOTS", default=0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("AXS_LOG_LEVEL", default="INFO")},
    "loggers": {"daphne": {"level": "WARNING"}, "django.server": {"level": "WARNING"}},
}

# Governance (docs/governance.md).
# Seconds a gateway re-reads the global policy (routing, admission limits) at most.
AXS_POLICY_REFRESH = env.float("AXS_POLICY_REFRESH", default=2.0)
# Quota Redis calls give up after this long; Redis is then skipped for AXS_QUOTA_REDIS_RETRY seconds.
AXS_QUOTA_REDIS_TIMEOUT = env.float("AXS_QUOTA_REDIS_TIMEOUT", default=0.25)
AXS_QUOTA_REDIS_RETRY = env.float("AXS_QUOTA_REDIS_RETRY", default=2.0)
# Redis connections each gateway process keeps for quotas (a request beyond them waits for one, up to 5 s).
AXS_QUOTA_REDIS_CONNECTIONS = env.int("AXS_QUOTA_REDIS_CONNECTIONS", default=16)
# A concurrency slot not released after this long is reclaimed (a gateway died mid-request).
AXS_INFLIGHT_TTL = env.float("AXS_INFLIGHT_TTL", default=900.0)
# Usage log and rejected-request audit: flush period, in-memory bound, and the exit spool.
AXS_LOG_FLUSH_SECONDS = env.float("AXS_LOG_FLUSH_SECONDS", default=1.0)
AXS_LOG_SPOOL_MAX = env.int("AXS_LOG_SPOOL_MAX", default=100_000)
AXS_SPOOL_DIR = env("AXS_SPOOL_DIR", default=str(BASE_DIR / "var" / "spool"))
