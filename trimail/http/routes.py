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
from ..jobs import Job
from ..models import Attachment, BatchRequest, SendRequest
from .body import parse_json, shorten
from .gate import OWNER
from .idempotency import check_key, fingerprint
from .metrics import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from .app import TrimailApp

log = logging.getLogger(__name__)
api = Blueprint("trimail", __name__)

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


def _accepted(job: Job) -> dict[str, str]:
    return {"id": job.id, "status": "queued"}


async def _enqueue(validate: Validate, answer: Callable[[list[Job]], dict[str, Any]]) -> Response:
    """Validate and queue; replay the answer to a known Idempotency-Key.

    The gate has already authenticated the caller and bounded the body.
    A replay is answered even while shutting down: it creates nothing.
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
    if key is None:
        app.dispatcher.ensure_accepting()  # refuse before spending time on parsing
        requests = await _messages(body, validate)
        return _queued(answer(app.dispatcher.submit_many(requests, owner)))
    print_ = fingerprint(request.path, body)
    replay = app.idempotency.begin(owner, check_key(key), print_)
    if replay is not None:
        return _queued(replay, {"Idempotent-Replayed": "true"})
    try:
        app.dispatcher.ensure_accepting()
        requests = await _messages(body, validate)
        answer_body = answer(app.dispatcher.submit_many(requests, owner))
    except BaseException:
        app.idempotency.abandon(owner, key)
        raise
    app.idempotency.complete(owner, key, print_, answer_body)
    return _queued(answer_body)


def _queued(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """The 202; a single job's answer points at its status with Location."""
    headers = dict(headers or {})
    if "id" in body:
        headers["Location"] = f"/email/{body['id']}"
    return json_response(body, 202, headers=headers)


@api.post("/email/send")
async def send_email() -> Response:
    """Validate one message, queue it, answer 202 with its job id."""
    return await _enqueue(_one, lambda jobs: _accepted(jobs[0]))


@api.post("/email/batch")
async def send_batch() -> Response:
    """Validate 1 to 100 messages, queue all or none, answer 202 with their ids in order."""
    return await _enqueue(_batch, lambda jobs: {"data": [_accepted(job) for job in jobs]})


class JobIdConverter(BaseConverter):
    """Job ids are 32 hex digits, so ``GET /email/send`` is a 405, not a status lookup."""

    regex = "[0-9a-f]{32}"


@api.get("/email/<job_id:job_id>")
async def job_status(job_id: str) -> Response:
    """The job's status, for the API key that created it; 404 for anyone else."""
    record = _app().dispatcher.lookup(job_id)
    if record is None or record.owner != _owner():
        raise errors.NotFound(
            f"no job {job_id!r} for this API key: the id is unknown, its status expired, "
            "or another key created it"
        )
    return json_response(record.status(), 200)


@api.get("/healthz")
async def healthz() -> Response:
    """Liveness, with the queue's depth and capacity and the worker count."""
    dispatcher = _app().dispatcher
    return json_response(
        {
            "status": "ok" if dispatcher.accepting else "shutting_down",
            "queue_depth": dispatcher.depth,
            "queue_capacity": dispatcher.capacity,
            "workers": dispatcher.workers,
            "outstanding": dispatcher.outstanding,
            "retrying": dispatcher.retrying,
        },
        200,
    )


@api.get("/readyz")
async def readyz() -> Response:
    """200 while new mail would be accepted; 503 ``shutting_down`` or ``queue_full`` if not."""
    _app().dispatcher.ensure_accepting()
    return json_response({"status": "ready"}, 200)


@api.get("/metrics")
async def metrics() -> Response:
    """Prometheus text format."""
    return Response(_app().metrics.exposition(), 200, content_type=CONTENT_TYPE_LATEST)


@api.get("/openapi.json")
async def openapi() -> Response:
    """The OpenAPI 3.1 document of this API."""
    return Response(_app().openapi_json, 200, content_type=JSON_TYPE)


@api.get("/docs")
async def docs() -> Response:
    """The OpenAPI document rendered for people."""
    return Response(_app().docs_html, 200, content_type="text/html; charset=utf-8")


def error_response(error: errors.HTTPError, headers: dict[str, str] | None = None) -> Response:
    return json_response(
        {"error": error.payload()}, error.status, headers={**error.headers(), **(headers or {})}
    )


@api.app_errorhandler(errors.HTTPError)
async def handle_trimail_error(error: errors.HTTPError) -> Response:
    return error_response(error)


@api.app_errorhandler(HTTPException)
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


@api.app_errorhandler(Exception)
async def handle_unexpected(error: Exception) -> Response:
    log.exception("unexpected error answering %s %s", request.method, request.path)
    return error_response(errors.HTTPError("internal error; the request was not queued"))
