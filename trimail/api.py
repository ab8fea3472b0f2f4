"""The HTTP routes and the JSON error answers.

Sending is authenticate, validate, enqueue, answer: the request path does no
I/O beyond reading the request, never talks to the SMTP server and never waits
for room in the queue.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from pydantic import ValidationError
from quart import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from . import errors
from .config import is_loopback
from .idempotency import check_key, fingerprint
from .jobs import Job
from .metrics import CONTENT_TYPE_LATEST
from .models import Attachment, BatchRequest, SendRequest

if TYPE_CHECKING:
    from .app import TrimailApp

log = logging.getLogger("trimail.api")
api = Blueprint("trimail", __name__)

JSON_TYPE = "application/json"
#: Sent with answers that may leave part of the request body unread (routing
#: errors, 413, crashes): answering before the body has arrived can otherwise
#: stall the next request on a kept-alive connection, so that connection ends.
CLOSE = {"Connection": "close"}


def _app() -> TrimailApp:
    return cast("TrimailApp", current_app)


def json_response(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False), status=status, headers=headers, content_type=JSON_TYPE
    )


def authorize(authorization: str | None, keys: tuple[bytes, ...], server_host: str | None) -> str:
    """Check the bearer token against ``keys`` in constant time; return the caller's name.

    The name (``key-1``, ``key-2``... in the order of TRIMAIL_API_KEYS, or
    ``local`` without keys) owns the caller's jobs and idempotency keys. With
    no keys configured only connections to a loopback address are served, so
    an instance exposed by mistake is not an open relay.
    """
    if not keys:
        if server_host is not None and not is_loopback(server_host):
            raise errors.Unauthorized(
                "this trimail has no API keys configured and serves loopback callers only; "
                "the operator must set TRIMAIL_API_KEYS"
            )
        return "local"
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.Unauthorized("send the header 'Authorization: Bearer <API key>'")
    presented = token.strip().encode()
    matched = 0
    for number, key in enumerate(keys, start=1):  # compare with every key: timing tells nothing
        if hmac.compare_digest(presented, key):
            matched = number
    if not matched:
        raise errors.Unauthorized("the API key in the Authorization header is not valid")
    return f"key-{matched}"


def _caller() -> str:
    server = request.scope.get("server") or (None, None)
    return authorize(request.headers.get("Authorization"), _app().api_keys, server[0])


def parse_json(body: str | bytes) -> Any:
    """Decode a JSON body; raise :class:`~trimail.errors.InvalidJSON` saying why not."""

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        # Decode here: json.loads(bytes) would also take UTF-16 and UTF-32, and decodes
        # with surrogatepass, so UTF-8-encoded surrogates would pass as text.
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        return json.loads(text, parse_constant=refuse_constant)
    except UnicodeDecodeError:
        raise errors.InvalidJSON("the request body is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise errors.InvalidJSON(f"the request body is not valid JSON: {exc}") from None


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


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    """One ``{"field", "rule", "message"}`` per problem, with fields named as in the request."""
    details = []
    for error in exc.errors(include_url=False):
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
        details.append({"field": field, "rule": rule, "message": message})
    return details


def _validation_failed(exc: ValidationError) -> errors.ValidationFailed:
    details = validation_details(exc)
    fields = ", ".join(dict.fromkeys(d["field"] for d in details))
    return errors.ValidationFailed(f"the request is invalid; fix: {fields}", details=details)


def _one(data: Any, context: dict[str, Any]) -> list[SendRequest]:
    try:
        return [SendRequest.model_validate(data, context=context)]
    except ValidationError as exc:
        raise _validation_failed(exc) from None


def _batch(data: Any, context: dict[str, Any]) -> list[SendRequest]:
    try:
        return BatchRequest.validate_python(data, context=context)
    except ValidationError as exc:
        raise _validation_failed(exc) from None


def _accepted(job: Job) -> dict[str, str]:
    return {"id": job.id, "status": "queued"}


async def _enqueue(
    validate: Callable[[Any, dict[str, Any]], list[SendRequest]],
    answer: Callable[[list[Job]], dict[str, Any]],
) -> Response:
    """Read, authenticate, validate and queue; replay the answer to a known Idempotency-Key."""
    app = _app()
    # Read the whole body before answering anything, errors included: a reply sent
    # while the body is still arriving can stall the next request on a kept-alive
    # connection. MAX_CONTENT_LENGTH bounds it (413).
    body = cast(bytes, await request.get_data(cache=False, as_text=False))
    caller = _caller()
    app.dispatcher.ensure_accepting()  # refuse before spending time on parsing
    if request.mimetype != JSON_TYPE:
        raise errors.UnsupportedMediaType(
            f"send the message as JSON with 'Content-Type: {JSON_TYPE}' "
            f"(got {request.mimetype or 'none'!r})"
        )
    key = request.headers.get("Idempotency-Key")
    if key is None:
        requests = validate(parse_json(body), app.validation_context)
        return _queued(answer(app.dispatcher.submit_many(requests, caller)))
    print_ = fingerprint(request.path, body)
    replay = app.idempotency.begin(caller, check_key(key), print_)
    if replay is not None:
        return _queued(replay, {"Idempotent-Replayed": "true"})
    try:
        requests = validate(parse_json(body), app.validation_context)
        answer_body = answer(app.dispatcher.submit_many(requests, caller))
    except BaseException:
        app.idempotency.abandon(caller, key)
        raise
    app.idempotency.complete(caller, key, print_, answer_body)
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
    caller = _caller()
    record = _app().dispatcher.lookup(job_id)
    if record is None or record.owner != caller:
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


@api.after_app_request
async def count_request(response: Response) -> Response:
    rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
    _app().metrics.request(rule, response.status_code)
    return response


def error_response(error: errors.HTTPError, close: bool = False) -> Response:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.details is not None:
        body["details"] = error.details
    headers = {**error.headers(), **(CLOSE if close else {})}
    return json_response({"error": body}, error.status, headers=headers)


@api.app_errorhandler(errors.HTTPError)
async def handle_trimail_error(error: errors.HTTPError) -> Response:
    return error_response(error)


@api.app_errorhandler(HTTPException)
async def handle_http_exception(error: HTTPException) -> Response:
    """Routing and protocol errors from Quart, in the same JSON shape."""
    status = error.code or 500
    described = f"{error.name}: {request.method} {request.path}"
    known: errors.HTTPError
    if status == 413:
        limit = _app().settings.max_request_bytes
        known = errors.PayloadTooLarge(f"the request body is larger than {limit} bytes")
    elif status == 404:
        known = errors.NotFound(f"{described}; see /openapi.json for the routes")
    elif status == 405:
        known = errors.MethodNotAllowed(described)
    elif status == 408:
        known = errors.RequestTimeout("the request body did not arrive in time")
    elif status < 500:
        known = errors.BadRequest(described)
    else:
        known = errors.HTTPError(described)
    return error_response(known, close=True)


@api.app_errorhandler(Exception)
async def handle_unexpected(error: Exception) -> Response:
    log.exception("unexpected error answering %s %s", request.method, request.path)
    return error_response(
        errors.HTTPError("internal error; the request was not queued"), close=True
    )
