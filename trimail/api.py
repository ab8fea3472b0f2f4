"""The HTTP routes: authenticate, validate, enqueue, answer; and the JSON error answers.

The request path does no I/O beyond reading the request: it never talks to the
SMTP server and never waits for room in the queue.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import TYPE_CHECKING, Any, cast

from pydantic import ValidationError
from quart import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from . import errors
from .config import is_loopback
from .models import Attachment, SendRequest

if TYPE_CHECKING:
    from .app import TrimailApp

log = logging.getLogger("trimail.api")
api = Blueprint("trimail", __name__)

JSON_TYPE = "application/json"


def _app() -> TrimailApp:
    return cast("TrimailApp", current_app)


def json_response(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False), status=status, headers=headers, content_type=JSON_TYPE
    )


def authorize(authorization: str | None, keys: tuple[bytes, ...], server_host: str | None) -> None:
    """Check the bearer token against ``keys`` in constant time.

    With no keys configured only connections to a loopback address are served,
    so an instance exposed by mistake is not an open relay.
    """
    if not keys:
        if server_host is not None and not is_loopback(server_host):
            raise errors.Unauthorized(
                "this trimail has no API keys configured and serves loopback callers only; "
                "the operator must set TRIMAIL_API_KEYS"
            )
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.Unauthorized("send the header 'Authorization: Bearer <API key>'")
    presented = token.strip().encode()
    matched = False
    for key in keys:  # compare with every key, so the time taken tells nothing
        matched |= hmac.compare_digest(presented, key)
    if not matched:
        raise errors.Unauthorized("the API key in the Authorization header is not valid")


def parse_json(body: str | bytes) -> Any:
    """Decode a JSON body; raise :class:`~trimail.errors.InvalidJSON` saying why not."""

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(body, parse_constant=refuse_constant)
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
        field = (error.get("ctx") or {}).get("field") or _field_path(loc)
        rule, message = error["type"], error["msg"]
        if rule == "extra_forbidden":
            rule = "unknown_field"
            message = f"unknown field; allowed: {', '.join(_allowed_fields(loc[:-1]))}"
        elif rule == "model_type" and not loc:
            rule, message = "object_required", "the request body must be a JSON object"
        details.append({"field": field, "rule": rule, "message": message})
    return details


@api.post("/email/send")
async def send_email() -> Response:
    """Validate one message, queue it, answer 202 with its job id."""
    app = _app()
    # Read the whole body before answering anything, errors included: a reply sent
    # while the body is still arriving can stall the next request on a kept-alive
    # connection. MAX_CONTENT_LENGTH bounds it (413).
    body = await request.get_data(cache=False)
    server = request.scope.get("server") or (None, None)
    authorize(request.headers.get("Authorization"), app.api_keys, server[0])
    app.dispatcher.ensure_accepting()  # refuse before spending time on parsing
    if request.mimetype != JSON_TYPE:
        raise errors.UnsupportedMediaType(
            f"send the message as JSON with 'Content-Type: {JSON_TYPE}' "
            f"(got {request.mimetype or 'none'!r})"
        )
    data = parse_json(body)
    try:
        message = SendRequest.model_validate(data, context=app.validation_context)
    except ValidationError as exc:
        details = validation_details(exc)
        fields = ", ".join(dict.fromkeys(d["field"] for d in details))
        raise errors.ValidationFailed(
            f"the request is invalid; fix: {fields}", details=details
        ) from None
    job = app.dispatcher.submit(message)
    return json_response({"id": job.id, "status": "queued"}, 202)


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


#: Sent with answers that may leave part of the request body unread (routing
#: errors, 413, crashes): answering before the body has arrived can otherwise
#: stall the next request on a kept-alive connection, so that connection ends.
CLOSE = {"Connection": "close"}


def error_response(error: errors.HTTPError, close: bool = False) -> Response:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.details is not None:
        body["details"] = error.details
    headers = {**error.headers(), **(CLOSE if close else {})}
    return json_response({"error": body}, error.status, headers=headers)


@api.app_errorhandler(errors.HTTPError)
async def handle_trimail_error(error: errors.HTTPError) -> Response:
    return error_response(error)


_WERKZEUG_ERRORS: dict[int, type[errors.HTTPError]] = {
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
}


@api.app_errorhandler(HTTPException)
async def handle_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    kind = _WERKZEUG_ERRORS.get(status)
    if status == 413:
        limit = _app().settings.max_request_bytes
        too_large = errors.PayloadTooLarge(f"the request body is larger than {limit} bytes")
        return error_response(too_large, close=True)
    if kind is not None:
        return error_response(kind(f"{error.name}: {request.method} {request.path}"), close=True)
    body = {"error": {"code": error.name.lower().replace(" ", "_"), "message": error.name}}
    return json_response(body, status, headers=CLOSE)


@api.app_errorhandler(Exception)
async def handle_unexpected(error: Exception) -> Response:
    log.exception("unexpected error answering %s %s", request.method, request.path)
    return error_response(
        errors.HTTPError("internal error; the request was not queued"), close=True
    )
