"""From a request body to validated messages, or to the 4xx answer that says what is wrong.

Errors name each field as the request wrote it (``to[2]``, ``headers.X-Tag``,
``[3].subject`` in a batch) with the rule it broke; an answer lists at most
:data:`MAX_DETAILS` problems, so that its size does not grow with the request's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from pydantic import ValidationError

from .. import errors
from ..models import Attachment, BatchRequest, SendRequest
from .body import parse_json, shorten

#: Bodies up to this size are validated on the event loop (a typical request
#: takes well under a millisecond); larger ones in a thread (see :func:`messages`).
INLINE_VALIDATION_BYTES = 64 * 1024
#: An error answer lists at most this many problems, and names this many fields
#: in its message, so that its size does not grow with the request's.
MAX_DETAILS = 50
MAX_FIELDS_NAMED = 10
MAX_FIELD_CHARS = 120

#: Turns decoded JSON into messages, with the validation context.
Validate = Callable[[Any, dict[str, Any]], list[SendRequest]]


def one_message(data: Any, context: dict[str, Any]) -> list[SendRequest]:
    """``POST /email/send``: one JSON object."""
    return [SendRequest.model_validate(data, context=context)]


def batch_of_messages(data: Any, context: dict[str, Any]) -> list[SendRequest]:
    """``POST /email/batch``: a JSON array of 1 to 100 messages."""
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


async def messages(
    body: bytes, validate: Validate, context: dict[str, Any], max_values: int
) -> list[SendRequest]:
    """The validated messages of ``body``; raises the 4xx error that says what is wrong.

    Small bodies are validated on the event loop; a large one (many recipients,
    a batch, attachments) can take tens of milliseconds of pure-Python checks,
    so it goes to a thread, where they yield to the event loop every switch
    interval instead of holding it.
    """
    if len(body) <= INLINE_VALIDATION_BYTES:
        return parse_and_validate(body, validate, context, max_values)
    return await trio.to_thread.run_sync(parse_and_validate, body, validate, context, max_values)


def parse_and_validate(
    body: bytes, validate: Validate, context: dict[str, Any], max_values: int
) -> list[SendRequest]:
    data = parse_json(body, max_values)
    try:
        return validate(data, context)
    except ValidationError as exc:
        raise validation_failed(exc) from None


def validation_failed(exc: ValidationError) -> errors.ValidationFailed:
    """The ``422`` for ``exc``: its message names the fields to fix."""
    details, omitted = validation_details(exc)
    fields = list(dict.fromkeys(d["field"] for d in details))
    listed = ", ".join(fields[:MAX_FIELDS_NAMED])
    if omitted or len(fields) > MAX_FIELDS_NAMED:
        listed += ", ..."
    message = f"the request is invalid; fix: {listed}"
    if omitted:
        message += f" ({omitted} more problem(s) not listed)"
    return errors.ValidationFailed(message, details=details, omitted=omitted or None)


def validation_details(exc: ValidationError) -> tuple[list[dict[str, str]], int]:
    """``{"field", "rule", "message"}`` per problem, fields named as in the request.

    At most :data:`MAX_DETAILS` are listed, each field and message shortened;
    the second value counts the problems left out.
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
