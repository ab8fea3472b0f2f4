"""The request schema of ``POST /email/send`` and every rule it enforces; no I/O.

Header text and addresses are checked by :mod:`trimail.mailbox`; the answers
are in :mod:`trimail.answers`.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PlainSerializer,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from .mailbox import Mailbox, check_encodable, check_header_text, parse_mailbox, validate_mailbox

#: RFC 5322 field name: printable US-ASCII except the colon.
_FIELD_NAME = re.compile(r"[!-9;-~]+")
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+")

#: Headers trimail writes itself; a request may not set them through ``headers``.
STRUCTURAL_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id", "mime-version"}
)
#: JSON Schema patterns for what the validators check (the schema says what it can; the
#: server's checks stay the reference). No control or line-break characters:
_NO_CONTROLS = "[^\x00-\x1f\x7f-\x9f\u2028\u2029]"
SUBJECT_PATTERN = f"^{_NO_CONTROLS}*[^\\s\x00-\x1f\x7f-\x9f\u2028\u2029]{_NO_CONTROLS}*$"
TEXT_PATTERN = f"^{_NO_CONTROLS}*$"
MAX_SUBJECT_CHARS = 998  # RFC 5322's line limit; longer subjects are folded when built
MAX_HEADER_VALUE_CHARS = 998
MAX_HEADER_NAME_CHARS = 76  # leaves room for ": " and a folded value within 78 columns
MAX_FILENAME_CHARS = 255  # the common filesystem limit
MAX_CONTENT_TYPE_CHARS = 255  # RFC 6838: type and subtype are at most 127 characters each
DEFAULT_MAX_RECIPIENTS = 50
#: Most extra headers and attachments in one message: far beyond any real mail,
#: and small enough that checking them costs microseconds.
MAX_HEADERS = 100
MAX_ATTACHMENTS = 100
#: The rule of a request with neither text nor html.
BODY_REQUIRED = "body_required"
#: The fields whose addresses count toward TRIMAIL_MAX_RECIPIENTS.
ADDRESS_FIELDS = ("to", "cc", "bcc", "reply_to")


def _count(value: Any) -> int:
    if isinstance(value, (list, dict)):
        return len(value)
    return 0 if value is None else 1


def over_limits(data: dict[str, Any], max_recipients: int) -> list[InitErrorDetails]:
    """Errors for the lists of one raw request that are over their limits; cheap to call."""
    problems = []
    recipients = sum(_count(data.get(name)) for name in ADDRESS_FIELDS)
    if recipients > max_recipients:
        problems.append(
            _problem(
                "to",
                "too_many_recipients",
                f"to, cc, bcc and reply_to together hold {recipients} addresses; at most "
                f"{max_recipients} are allowed",
            )
        )
    for name, limit in (("headers", MAX_HEADERS), ("attachments", MAX_ATTACHMENTS)):
        count = _count(data.get(name))
        if count > limit:
            problems.append(
                _problem(name, f"too_many_{name}", f"{name} holds {count} entries; at most {limit}")
            )
    return problems


def _problem(field: str, rule: str, message: str) -> InitErrorDetails:
    return InitErrorDetails(
        type=PydanticCustomError(rule, "{message}", {"message": message}), loc=(field,), input=None
    )


def _kept(error: ErrorDetails) -> InitErrorDetails:
    """An error already found, to be raised again with others (its rule, message and place)."""
    context = {"message": error["msg"]}
    field = (error.get("ctx") or {}).get("field")
    if field is not None:
        context["field"] = field
    return InitErrorDetails(
        type=PydanticCustomError(error["type"], "{message}", context),
        loc=error["loc"],
        input=error["input"],
    )


def json_values_limit(max_recipients: int) -> int:
    """More JSON values than the largest valid batch can hold (see trimail.http.body)."""
    per_message = max_recipients + 4 * MAX_HEADERS + 16 * MAX_ATTACHMENTS + 64
    return MAX_BATCH * per_message


def _as_list(value: Any) -> Any:
    """One address becomes a list of one; anything but a string or a list is refused."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise PydanticCustomError(
            "string_or_list_type", "Input should be an address or a list of addresses"
        )
    return value


_MAILBOX_SCHEMA: dict[str, Any] = {
    "type": "string",
    "description": 'An address, "addr" or "Name <addr>"; IDN domains are accepted.',
    "examples": ["Ada Lovelace <ada@example.com>"],
}
MailboxField = Annotated[
    Mailbox, PlainValidator(validate_mailbox), PlainSerializer(str), WithJsonSchema(_MAILBOX_SCHEMA)
]
_NON_EMPTY_MAILBOX_LIST: dict[str, Any] = {"type": "array", "items": _MAILBOX_SCHEMA, "minItems": 1}
MailboxList = Annotated[
    list[MailboxField],
    BeforeValidator(_as_list),
    WithJsonSchema(
        {
            "anyOf": [_MAILBOX_SCHEMA, {"type": "array", "items": _MAILBOX_SCHEMA}],
            "description": "One address or a list of them.",
        }
    ),
]


class Attachment(BaseModel):
    """One file attached to the mail."""

    # After validation `content` holds the decoded bytes.

    model_config = ConfigDict(extra="forbid", frozen=True)

    filename: str = Field(
        min_length=1,
        max_length=MAX_FILENAME_CHARS,
        description="The name recipients see.",
        json_schema_extra={"pattern": TEXT_PATTERN, "examples": ["invoice.pdf"]},
    )
    content: Annotated[bytes, WithJsonSchema({"type": "string", "contentEncoding": "base64"})] = (
        Field(description="The file's bytes, base64-encoded (RFC 4648, no newlines).")
    )
    content_type: str | None = Field(
        None,
        max_length=MAX_CONTENT_TYPE_CHARS,
        description="MIME type such as application/pdf; guessed from the filename if absent.",
        json_schema_extra={
            "pattern": f"^{_CONTENT_TYPE.pattern}$",
            "examples": ["application/pdf"],
        },
    )

    @field_validator("filename")
    @classmethod
    def _filename_safe(cls, value: str) -> str:
        return check_header_text(value, "a filename")

    @field_validator("content", mode="before")
    @classmethod
    def _strict_base64(cls, value: Any) -> bytes:
        if not isinstance(value, str):
            raise PydanticCustomError("string_type", "Input should be a base64 string")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise PydanticCustomError(
                "invalid_base64",
                "content must be standard base64 (A-Z, a-z, 0-9, +, / and = padding; "
                "no whitespace)",
            ) from None

    @field_validator("content_type")
    @classmethod
    def _content_type_shape(cls, value: str | None) -> str | None:
        if value is not None and not _CONTENT_TYPE.fullmatch(value):
            raise PydanticCustomError(
                "invalid_content_type",
                "content_type must look like type/subtype, for example application/pdf",
            )
        if value is not None and value.lower().startswith(("multipart/", "message/")):
            raise PydanticCustomError(
                "invalid_content_type",
                "content_type cannot be multipart/* or message/* (an attachment travels "
                "base64-encoded); send it as application/octet-stream",
            )
        return value.lower() if value else value

    @property
    def mime_type(self) -> str:
        """``content_type``, else the type guessed from the filename, else octet-stream.

        A guess of ``message/*`` or ``multipart/*`` (``.eml``, ``.mht``) is octet-stream:
        an attachment travels base64-encoded, which those types do not allow.
        """
        if self.content_type:
            return self.content_type
        guessed, _ = mimetypes.guess_type(self.filename, strict=False)
        if guessed is None or guessed.startswith(("message/", "multipart/")):
            return "application/octet-stream"
        return guessed


class SendRequest(BaseModel):
    """One email to send."""

    # Validate with SendRequest.model_validate(data, context={"default_from": str | None,
    # "max_recipients": int, "local_domains": bool}); every context key is optional.

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: MailboxField | None = Field(
        None,
        alias="from",
        validate_default=True,
        description="The sender; required unless the server has TRIMAIL_DEFAULT_FROM.",
    )
    to: MailboxList = Field(
        min_length=1,
        description="Recipients; at least one.",
        json_schema_extra={"anyOf": [_MAILBOX_SCHEMA, _NON_EMPTY_MAILBOX_LIST]},
    )
    cc: MailboxList = Field(default_factory=list, description="Copy recipients.")
    bcc: MailboxList = Field(
        default_factory=list, description="Hidden recipients: they never appear in the headers."
    )
    reply_to: MailboxList = Field(default_factory=list, description="Where replies go.")
    subject: str = Field(
        max_length=MAX_SUBJECT_CHARS,
        description="Not blank; no control or line-break characters.",
        json_schema_extra={
            "minLength": 1,
            "pattern": SUBJECT_PATTERN,
            "examples": ["Your order has shipped"],
        },
    )
    text: str | None = Field(
        None,
        description="Plain-text body; give text, html or both.",
        json_schema_extra={"examples": ["Hello Ada,\n\nyour order is on its way."]},
    )
    html: str | None = Field(None, description="HTML body; give text, html or both.")
    headers: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_HEADERS,
        description=f"At most {MAX_HEADERS} extra headers. Names are RFC 5322 field names; "
        "From, To, Cc, Bcc, Reply-To, Subject, Date, Message-ID, MIME-Version and Content-* "
        "are refused.",
        json_schema_extra={
            "propertyNames": {"pattern": "^[!-9;-~]+$", "maxLength": MAX_HEADER_NAME_CHARS},
            "additionalProperties": {
                "type": "string",
                "pattern": TEXT_PATTERN,
                "maxLength": MAX_HEADER_VALUE_CHARS,
            },
            "examples": [{"X-Campaign": "spring-sale"}],
        },
    )
    attachments: list[Attachment] = Field(
        default_factory=list,
        max_length=MAX_ATTACHMENTS,
        description=f"At most {MAX_ATTACHMENTS} files to attach.",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _bounded_before_checked(
        cls, data: Any, handler: ModelWrapValidatorHandler[SendRequest], info: ValidationInfo
    ) -> SendRequest:
        """Refuse lists longer than their limits before any item is checked (each costs)."""
        if isinstance(data, dict):
            limit = (info.context or {}).get("max_recipients", DEFAULT_MAX_RECIPIENTS)
            problems = over_limits(data, limit)
            if problems:
                raise ValidationError.from_exception_data(cls.__name__, problems)
        try:
            return handler(data)
        except ValidationError as exc:
            found = exc.errors(include_url=False)
            if (
                not isinstance(data, dict)
                or data.get("text") is not None
                or data.get("html") is not None
                or any(error["type"] == BODY_REQUIRED for error in found)
            ):
                raise
            # The missing body is reported with the other problems, in the same answer
            # (the after-validator that checks it runs only when everything else passed).
            again = [_kept(error) for error in found]
            again.append(_problem("text", BODY_REQUIRED, "give text, html or both"))
            raise ValidationError.from_exception_data(cls.__name__, again) from None

    @field_validator("from_", mode="after")
    @classmethod
    def _sender_or_default(cls, value: Mailbox | None, info: ValidationInfo) -> Mailbox:
        if value is not None:
            return value
        default = (info.context or {}).get("default_from")
        if default is None:
            raise PydanticCustomError(
                "missing", "Field required (or configure TRIMAIL_DEFAULT_FROM on the server)"
            )
        return parse_mailbox(default, bool((info.context or {}).get("local_domains")))

    @field_validator("subject")
    @classmethod
    def _subject_safe(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("empty", "subject must not be empty or blank")
        return check_header_text(value, "subject")

    @field_validator("text", "html")
    @classmethod
    def _body_encodable(cls, value: str | None, info: ValidationInfo) -> str | None:
        return value if value is None else check_encodable(value, info.field_name or "body")

    @field_validator("headers")
    @classmethod
    def _extra_headers_safe(cls, value: dict[str, str]) -> dict[str, str]:
        seen: set[str] = set()
        for name, text in value.items():
            if name.lower() in seen:
                raise PydanticCustomError(
                    "duplicate_header",
                    "header '{name}' is given twice (header names are case-insensitive)",
                    {"name": name, "field": f"headers.{name}"},
                )
            seen.add(name.lower())
            if len(name) > MAX_HEADER_NAME_CHARS or not _FIELD_NAME.fullmatch(name):
                raise PydanticCustomError(
                    "invalid_header_name",
                    "header name '{name}' must be 1-76 printable ASCII characters without ':'",
                    {"name": name, "field": f"headers.{name}"},
                )
            lowered = name.lower()
            if lowered in STRUCTURAL_HEADERS or lowered.startswith("content-"):
                raise PydanticCustomError(
                    "forbidden_header",
                    "header '{name}' is set by trimail; use the request's own fields instead",
                    {"name": name, "field": f"headers.{name}"},
                )
            if len(text) > MAX_HEADER_VALUE_CHARS:
                raise PydanticCustomError(
                    "header_too_long",
                    "header '{name}' must be at most 998 characters",
                    {"name": name, "field": f"headers.{name}"},
                )
            check_header_text(text, f"header '{name}'", field=f"headers.{name}")
        return value

    @model_validator(mode="after")
    def _body_given(self) -> SendRequest:
        if self.text is None and self.html is None:
            raise PydanticCustomError(BODY_REQUIRED, "give text, html or both", {"field": "text"})
        return self

    @property
    def sender(self) -> Mailbox:
        assert self.from_ is not None  # the validator fills it or fails
        return self.from_

    @property
    def envelope_recipients(self) -> list[Mailbox]:
        """to + cc + bcc, each address once, in that order."""
        seen: set[str] = set()
        unique = []
        for mailbox in (*self.to, *self.cc, *self.bcc):
            key = mailbox.smtp_address.lower()
            if key not in seen:
                seen.add(key)
                unique.append(mailbox)
        return unique


MAX_BATCH = 100

#: Validates the body of ``POST /email/batch``: 1 to 100 messages.
BatchRequest = TypeAdapter(Annotated[list[SendRequest], Field(min_length=1, max_length=MAX_BATCH)])
