"""The HTTP routes other than sending (see :mod:`trimail.http.sending`), and JSON errors.

Every error, Quart's routing and protocol errors included, is answered as
``{"error": {"code", "message", "details"?}}`` with the same codes.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, cast

from quart import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from .. import errors
from ..config import Role
from .body import shorten
from .docs import asset
from .gate import OWNER
from .metrics import CONTENT_TYPE_LATEST
from .sending import JSON_TYPE

if TYPE_CHECKING:
    from .app import TrimailApp

log = logging.getLogger(__name__)
#: Job status; not served by the delivery role (nor is sending).
jobs = Blueprint("jobs", __name__)
#: Health, readiness, metrics and the API document; served by every role.
operations = Blueprint("operations", __name__)


def _app() -> TrimailApp:
    return cast("TrimailApp", current_app)


def _owner() -> str | None:
    """The caller's owner id, put into the scope by the gate."""
    return cast("dict[str, str | None]", request.scope).get(OWNER)


def json_response(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False), status=status, headers=headers, content_type=JSON_TYPE
    )


class JobIdConverter(BaseConverter):
    """Job ids are 32 hex digits, so ``GET /email/send`` is a 405, not a status lookup."""

    regex = "[0-9a-f]{32}"


@jobs.get("/email/<job_id:job_id>")
async def job_status(job_id: str) -> Response:
    """The job's status, for the API key that created it; 404 for anyone else."""
    app = _app()
    status = await app.store.status(job_id, app.clock())  # type: ignore[union-attr]
    if status is None or status.owner != _owner():
        raise errors.NotFound(
            f"no job {job_id!r} for this API key: the id is unknown, its status expired, "
            "or another key created it"
        )
    return json_response(status.to_json(), 200)


@operations.get("/healthz")
async def healthz() -> Response:
    """Liveness, and the store's open jobs as last counted (across instances)."""
    app = _app()
    stats, settings = await app.maintenance.current(), app.settings
    stopping = settings.role is not Role.DELIVERY and not app.intake.accepting
    return json_response(
        {
            "status": "shutting_down" if stopping else "ok",
            "role": settings.role.value,
            "store": app.store.kind if app.store is not None else None,
            "store_reachable": app.maintenance.error is None,
            "queue_depth": stats.queued,
            "sending": stats.sending,
            "retrying": stats.retrying,
            "outstanding": stats.outstanding,
            "queue_capacity": settings.effective_queue_size,
            "queue_bytes": stats.bytes,
            "queue_bytes_capacity": settings.effective_queue_bytes,
            "workers": settings.workers if app.dispatcher is not None else 0,
        },
        200,
    )


#: Seconds /readyz suggests waiting while the provider fails (deliveries retry meanwhile).
PROVIDER_RETRY_AFTER = 5


@operations.get("/readyz")
async def readyz() -> Response:
    """200 while this instance does its role; 503 with the reason if not."""
    app = _app()
    if app.settings.role is not Role.DELIVERY:
        app.intake.ensure_accepting()
    stats, settings = await app.maintenance.current(), app.settings
    if app.maintenance.error is not None:
        raise errors.StoreUnavailable("the job store does not answer; retry after the delay given")
    if app.dispatcher is not None and app.dispatcher.provider.problem is not None:
        raise errors.ProviderUnavailable(
            f"the SMTP provider cannot be used: {app.dispatcher.provider.problem}",
            retry_after=PROVIDER_RETRY_AFTER,
        )
    if app.settings.role is not Role.DELIVERY and (
        stats.outstanding >= settings.effective_queue_size
        or stats.bytes >= settings.effective_queue_bytes
    ):
        raise errors.QueueFull(
            "the queue holds as many jobs or bytes as it may; retry after the delay given",
            retry_after=1,
        )
    return json_response({"status": "ready"}, 200)


@operations.get("/metrics")
async def metrics() -> Response:
    """Prometheus text format."""
    app = _app()
    await app.maintenance.current()
    return Response(app.metrics.exposition(), 200, content_type=CONTENT_TYPE_LATEST)


@operations.get("/openapi.json")
async def openapi() -> Response:
    """The OpenAPI 3.1 document of this API."""
    return Response(_app().openapi_json, 200, content_type=JSON_TYPE)


@operations.get("/docs")
async def docs() -> Response:
    """The OpenAPI document rendered for people (Swagger UI; see trimail.http.docs)."""
    return Response(_app().docs_html, 200, content_type="text/html; charset=utf-8")


@operations.get("/docs/assets/<name>")
async def docs_asset(name: str) -> Response:
    """One of Swagger UI's files, by name from a fixed list."""
    found = asset(name)
    if found is None:
        raise errors.NotFound(f"no documentation asset {name!r}")
    content, content_type = found
    return Response(content, 200, content_type=content_type,
                    headers={"Cache-Control": "public, max-age=86400"})  # fmt: skip


def error_response(error: errors.HTTPError) -> Response:
    return json_response({"error": error.payload()}, error.status, headers=error.headers())


@operations.app_errorhandler(errors.HTTPError)
async def handle_trimail_error(error: errors.HTTPError) -> Response:
    return error_response(error)


@operations.app_errorhandler(HTTPException)
async def handle_http_exception(error: HTTPException) -> Response:
    """Routing and protocol errors from Quart, in the same JSON shape."""
    status = error.code or 500
    described = f"{error.name}: {request.method} {shorten(request.path, 200)}"
    known: errors.HTTPError
    if status == 413:
        limit = _app().settings.max_request_bytes
        known = errors.PayloadTooLarge(f"the request body is larger than {limit} bytes")
    elif status == 404:
        known = errors.NotFound(f"{described}; see /openapi.json for the routes")
    elif status == 405:
        allowed = getattr(error, "valid_methods", None) or ()
        known = errors.MethodNotAllowed(described, allow=", ".join(sorted(allowed)))
    elif status == 408:
        known = errors.RequestTimeout("the request body did not arrive in time")
    elif status < 500:
        known = errors.BadRequest(described)
    else:
        known = errors.HTTPError(described)
    return error_response(known)


@operations.app_errorhandler(Exception)
async def handle_unexpected(error: Exception) -> Response:
    log.exception("unexpected error answering %s %s", request.method, request.path)
    return error_response(errors.HTTPError("internal error; the request was not queued"))
