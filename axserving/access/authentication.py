from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from . import selectors


class ApiKeyAuthentication(BaseAuthentication):
    """DRF authentication by bearer API key; `request.auth` is the KeyInfo."""

    def authenticate(self, request: Request) -> tuple[None, selectors.KeyInfo] | None:
        header = request.headers.get("Authorization", "")
        if not header:
            return None
        return None, selectors.get_api_key(header)

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"
