"""The HTTP routes and the JSON error answers.

Sending is validate, enqueue, answer (the gate in front has authenticated the
caller and bounded the body): the request path does no I/O beyond reading the
request, never talks to the SMTP server and never waits for room in the queue.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import trio
from pydantic import ValidationError
from quart import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from .. import errors
from ..config import Role
from ..models import Attachment, BatchRequest, SendRequest
from .body import parse_json, shorten
from .gate import OWNER
from .idempotency import check_key, fingerprint
from .metrics import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from .app import TrimailApp

log = logging.getLogger(__name__)
#: Sending and job status; not served by the delivery role.
sending = Blueprint("sending", __name__)
#: Health, readiness, metrics and the API document; served by every role.
operations = Blueprint("operations", __name__)


JSON_TYPE = "application/json"
#: Bodies up to this size are validated on the event loop (a typical request
#: takes well under a millisecond); larger ones in a thread (see _messages).
INLINE_VALIDATION_BYTES = 64 * 1024
#: An error answer lists at most this many problems, and names this many fields
#: in its message, so that its size does not grow with the request's.
MAX_DETAILS = 50
MAX_FIELDS_NAMED = 10
MAX_FIELD_CHARS = 120


def _app() -> TrimailApp:
    return cast("TrimailApp", current_app)


def _owner() -> str | None:
    """The caller's owner id, put into the scope by the gate."""
    return cast("dict[str, str | None]", request.scope).get(OWNER)


def json_response(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False), status=status, headers=headers, content_type=JSON_TYPE
    )


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            name = "from" if part == "from_" else part
            path += f".{name}" if path else name
    return path or "(root)"


def _allowed_fields(loc: tuple[int | str, ...]) -> list[str]:
    model = Attachment if "attachments" in loc else SendRequest
    return [field.alias or name for name, field in model.model_fields.items()]


def validation_details(exc: ValidationError) -> tuple[list[dict[str, str]], int]:
    """``{"field", "rule", "message"}`` per problem, fields named as in the request.

    At most :data:`MAX_DETAILS` are listed, each field and message shortened, so
    that an answer stays small whatever the request; the second value counts
    the problems left out.
    """
    details = []
    for error in exc.errors(include_url=False, include_input=False)[:MAX_DETAILS]:
        loc = error["loc"]
        field = _field_path(loc)
        context_field = (error.get("ctx") or {}).get("field")
        if context_field:  # names the field within its message; keep a batch index
            batch_index = loc[:1] if loc and isinstance(loc[0], int) else ()
            field = f"{_field_path(batch_index)}.{context_field}" if batch_index else context_field
        rule, message = error["type"], error["msg"]
        if rule == "extra_forbidden":
            rule = "unknown_field"
            message = f"unknown field; allowed: {', '.join(_allowed_fields(loc[:-1]))}"
        elif rule == "model_type" and not loc:
            rule, message = "object_required", "the request body must be a JSON object"
        details.append(
            {"field": shorten(field, MAX_FIELD_CHARS), "rule": rule, "message": shorten(message)}
        )
    return details, exc.error_count() - len(details)


def _validation_failed(exc: ValidationError) -> errors.ValidationFailed:
    details, omitted = validation_details(exc)
    fields = list(dict.fromkeys(d["field"] for d in details))
    listed = ", ".join(fields[:MAX_FIELDS_NAMED])
    if omitted or len(fields) > MAX_FIELDS_NAMED:
        listed += ", ..."
    message = f"the request is invalid; fix: {listed}"
    if omitted:
        message += f" ({omitted} more problem(s) not listed)"
    return errors.ValidationFailed(message, details=details, omitted=omitted or None)


def _one(data: Any, context: dict[str, Any]) -> list[SendRequest]:
    return [SendRequest.model_validate(data, context=context)]


def _batch(data: Any, context: dict[str, Any]) -> list[SendRequest]:
    if not isinstance(data, list):
        raise errors.ValidationFailed(
            "the request body must be a JSON array of messages",
            details=[
                {
                    "field": "(root)",
                    "rule": "array_required",
                    "message": "send a JSON array of 1 to 100 messages, each as for /email/send",
                }
            ],
        )
    return BatchRequest.validate_python(data, context=context)


Validate = Callable[[Any, dict[str, Any]], list[SendRequest]]


def _parse_and_validate(body: bytes, validate: Validate, app: TrimailApp) -> list[SendRequest]:
    """The validated messages of ``body``; raises the 4xx error that says what is wrong."""
    data = parse_json(body, app.json_values_limit)
    try:
        return validate(data, app.validation_context)
    except ValidationError as exc:
        raise _validation_failed(exc) from None


async def _messages(body: bytes, validate: Validate) -> list[SendRequest]:
    """Validate on the event loop when the body is small, else in a thread.

    A large body (many recipients, a batch, attachments) can take tens of
    milliseconds of pure-Python checks; in a thread they yield to the event loop
    every switch interval instead of holding it.
    """
    app = _app()
    if len(body) <= INLINE_VALIDATION_BYTES:
        return _parse_and_validate(body, validate, app)
    return await trio.to_thread.run_sync(_parse_and_validate, body, validate, app)


def _accepted(job_id: str) -> dict[str, str]:
    return {"id": job_id, "status": "queued"}


async def _enqueue(validate: Validate, answer: Callable[[list[str]], dict[str, Any]]) -> Response:
    """Validate and store; replay the answer to a known Idempotency-Key.

    The gate has already authenticated the caller and bounded the body. A
    replay is answered even while shutting down: it creates nothing. With a
    durable store the 202 is sent only once the jobs are committed.
    """
    app = _app()
    owner = _owner()
    if request.mimetype != JSON_TYPE:
        raise errors.UnsupportedMediaType(
            f"send the message as JSON with 'Content-Type: {JSON_TYPE}' "
            f"(got {request.mimetype or 'none'!r})"
        )
    body = cast(bytes, await request.get_data(cache=False, as_text=False))
    key = request.headers.get("Idempotency-Key")
    idempotency = None
    if key is not None:
        idempotency = (check_key(key), fingerprint(request.path, body))
        known = await app.store.replay(owner, key, app.clock())  # type: ignore[union-attr]
        if known is not None:
            if known.fingerprint != idempotency[1]:
                raise errors.IdempotencyKeyReused()
            return _queued(known.answer, {"Idempotent-Replayed": "true"})
    app.intake.ensure_accepting()  # refuse before spending time on parsing
    requests = await _messages(body, validate)
    answer_body, replayed = await app.intake.submit(requests, owner, answer, idempotency)
    return _queued(answer_body, {"Idempotent-Replayed": "true"} if replayed else None)


def _queued(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """The 202; a single job's answer points at its status with Location."""
    headers = dict(headers or {})
    if "id" in body:
        headers["Location"] = f"/email/{body['id']}"
    return json_response(body, 202, headers=headers)


@sending.post("/email/send")
async def send_email() -> Response:
    """Validate one message, store it, answer 202 with its job id."""
    return await _enqueue(_one, lambda ids: _accepted(ids[0]))


@sending.post("/email/batch")
async def send_batch() -> Response:
    """Validate 1 to 100 messages, store all or none, answer 202 with their ids in order."""
    return await _enqueue(_batch, lambda ids: {"data": [_accepted(i) for i in ids]})


class JobIdConverter(BaseConverter):
    """Job ids are 32 hex digits, so ``GET /email/send`` is a 405, not a status lookup."""

    regex = "[0-9a-f]{32}"


@sending.get("/email/<job_id:job_id>")
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


@operations.get("/readyz")
async def readyz() -> Response:
    """200 while this instance does its role; 503 with the reason if not."""
    app = _app()
    if app.settings.role is not Role.DELIVERY:
        app.intake.ensure_accepting()
    stats, settings = await app.maintenance.current(), app.settings
    if app.maintenance.error is not None:
        raise errors.StoreUnavailable("the job store does not answer; retry after the delay given")
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
    """The OpenAPI document rendered for people."""
    return Response(_app().docs_html, 200, content_type="text/html; charset=utf-8")


def error_response(error: errors.HTTPError, headers: dict[str, str] | None = None) -> Response:
    return json_response(
        {"error": error.payload()}, error.status, headers={**error.headers(), **(headers or {})}
    )


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
        known = errors.MethodNotAllowed(described)
        allowed = getattr(error, "valid_methods", None) or ()
        return error_response(known, {"Allow": ", ".join(sorted(allowed))})
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
