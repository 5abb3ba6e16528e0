"""DRF permissions by key scope, and the base view of the control API (`/v1/admin/*`)."""

from typing import Any

from rest_framework import exceptions as drf_exceptions
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.models import Outcome
from audit.services import record_event
from axserving.errors import ApiError, AuthenticationFailed

from .errors import MissingScope
from .models import Scope
from .selectors import KeyInfo, presented_prefix


class HasScope(BasePermission):
    """Allow keys holding `scope`; 401 without a key, 403 (`missing_scope`) with the wrong one."""

    scope: str = Scope.ADMIN

    def has_permission(self, request: Request, view: APIView) -> bool:
        key = request.auth
        if not isinstance(key, KeyInfo):
            raise AuthenticationFailed()
        if self.scope not in key.scopes:
            raise MissingScope(f"This key lacks the '{self.scope}' scope.")
        return True


class HasAdminScope(HasScope):
    scope = Scope.ADMIN


class HasMetricsScope(HasScope):
    scope = Scope.METRICS


def actor_of(request: Request) -> str:
    key = request.auth
    return key.actor if isinstance(key, KeyInfo) else "anonymous"


class AdminAPIView(APIView):
    """Base of every control-plane view: admin scope, and an audit row for each refused request."""

    permission_classes = [HasAdminScope]

    def handle_exception(self, exc: Exception) -> Response:
        status = exc.status if isinstance(exc, ApiError) else getattr(exc, "status_code", None)
        if status in (401, 403, 429):
            # Control-plane traffic is rare: the refusal is written at once rather than buffered.
            key = getattr(self.request, "_auth", None)
            record_event(
                actor=key.actor if isinstance(key, KeyInfo) else "anonymous",
                action="request.rejected",
                target=f"{self.request.method} {self.request.path}",
                outcome=Outcome.DENIED,
                request_id=getattr(self.request, "request_id", ""),
                data={
                    "status": status,
                    "code": getattr(exc, "code", None) or getattr(exc, "default_code", ""),
                    "presented_prefix": "" if isinstance(key, KeyInfo) else presented_prefix(self.request.headers.get("Authorization", "")),
                },
            )
        return super().handle_exception(exc)

    def request_id(self) -> str:
        return str(getattr(self.request, "request_id", ""))


def query_bool(value: Any) -> bool | None:
    if value in (None, ""):
        return None
    lowered = str(value).lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise drf_exceptions.ValidationError({"active": ["Must be true or false."]})
