import orjson
from django.http import HttpRequest, HttpResponse

from . import health as health_checks


async def health(request: HttpRequest) -> HttpResponse:
    report = await health_checks.aget_health()
    status = 503 if report["status"] == "unavailable" else 200
    return HttpResponse(orjson.dumps(report), status=status, content_type="application/json")
