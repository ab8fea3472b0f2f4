"""The answers of the API, as pydantic models: documented in the OpenAPI document, and
read back by the client. The routes build them as plain dicts; no I/O."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Accepted(BaseModel):
    """``202`` for one message: the job id to find it in logs, status and Message-ID."""

    id: str = Field(description="Opaque job id.")
    status: Literal["queued"] = "queued"


class BatchAccepted(BaseModel):
    """``202`` for a batch: one entry per message, in the order sent."""

    data: list[Accepted]


class LastError(BaseModel):
    code: int | None = Field(description="The SMTP reply code, if the server replied.")
    message: str


class JobStatus(BaseModel):
    """``GET /email/{id}``."""

    id: str
    status: Literal["queued", "sending", "retrying", "sent", "failed", "undelivered"] = Field(
        description="undelivered: the memory store's job when its process stopped."
    )
    attempts: int
    created_at: str = Field(description="RFC 3339, UTC.", json_schema_extra={"format": "date-time"})
    updated_at: str = Field(description="RFC 3339, UTC.", json_schema_extra={"format": "date-time"})
    last_error: LastError | None = Field(None, description="The last failure; absent once sent.")
    failed_recipients: dict[str, str] | None = Field(
        None, description="Recipients the server refused for good, with its reply."
    )


class FieldError(BaseModel):
    field: str = Field(description='The request field, as "to[1]" or "[3].subject".')
    rule: str = Field(description="The rule it broke, e.g. invalid_address.")
    message: str


class RetryAfter(BaseModel):
    retry_after: int = Field(description="Seconds to wait before retrying, as Retry-After says.")


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable; one of a closed set.")
    message: str = Field(description="What to change, in one sentence.")
    details: list[FieldError] | RetryAfter | None = Field(
        None, description="The problems of a validation_error; the delay of a 503."
    )


class ErrorBody(BaseModel):
    """Every error answer."""

    error: ErrorDetail


class Health(BaseModel):
    """``GET /healthz``: this instance's state, and the store's open jobs (all instances)."""

    status: Literal["ok", "shutting_down"]
    role: Literal["all", "api", "delivery"]
    store: Literal["memory", "sqlite", "postgresql"]
    store_reachable: bool = Field(description="Whether the store answered its last count.")
    queue_depth: int = Field(description="Jobs queued, not yet attempted.")
    sending: int = Field(description="Jobs in an attempt.")
    retrying: int = Field(description="Jobs waiting for their next attempt.")
    outstanding: int = Field(description="Jobs not yet final: the three above.")
    queue_capacity: int = Field(description="Most jobs not yet final (TRIMAIL_QUEUE_SIZE).")
    queue_bytes: int = Field(description="Bytes of the messages not yet final.")
    queue_bytes_capacity: int = Field(description="TRIMAIL_QUEUE_BYTES.")
    workers: int = Field(description="This process's delivery workers (0 for --role api).")


class Ready(BaseModel):
    """``GET /readyz`` when ready."""

    status: Literal["ready"]
