"""Governance errors, each a stable code in the OpenAI envelope."""

from axserving.errors import InvalidRequest, NotFound, PermissionDenied, RateLimited


class MissingScope(PermissionDenied):
    code = "missing_scope"


class ModelNotAllowed(PermissionDenied):
    code = "model_not_allowed"


class MaxTokensOverCap(InvalidRequest):
    code = "max_tokens_over_cap"


class QuotaExceeded(RateLimited):
    code = "quota_exceeded"


class KeyNotFound(NotFound):
    code = "key_not_found"
    message = "No API key with that id."


class ProjectNotFound(NotFound):
    code = "project_not_found"
    message = "No project with that id."
