"""The OpenAPI 3.1 document, generated from the same pydantic models that validate requests.

Built once per app. ``render_html`` turns it into the page for ``/docs``
(Swagger UI from local assets, and a plain reference for readers without
JavaScript).
"""

from __future__ import annotations

import html
import json
from typing import Any

from pydantic import BaseModel

from ..answers import Accepted, BatchAccepted, ErrorBody, Health, JobStatus, Ready
from ..errors import error_codes
from ..models import MAX_BATCH, SendRequest
from .docs import ASSETS, docs_page
from .idempotency import MAX_KEY_CHARS

REF = "#/components/schemas/{model}"
#: The error codes each route can answer, by HTTP status.
SUBMIT_ERRORS = {
    400: ["invalid_json", "invalid_idempotency_key", "bad_request"],
    401: ["unauthorized"],
    408: ["request_timeout"],
    409: ["invalid_idempotent_request"],
    413: ["payload_too_large"],
    415: ["unsupported_media_type"],
    422: ["validation_error"],
    500: ["internal_error"],
    503: ["queue_full", "server_busy", "shutting_down", "store_unavailable"],
}
STATUS_ERRORS = {401: ["unauthorized"], 404: ["not_found"], 503: ["store_unavailable"]}
METRICS_ERRORS = {401: ["unauthorized"]}
READY_ERRORS = {503: ["queue_full", "shutting_down", "store_unavailable", "provider_unavailable"]}
DOCS_ERRORS = {404: ["not_found"]}
STATUS_TEXT = {
    200: "OK", 202: "Accepted", 400: "Bad request", 401: "Unauthorized", 404: "Not found",
    408: "Request timeout", 409: "Conflict", 413: "Payload too large",
    415: "Unsupported media type", 422: "Invalid request", 500: "Internal error",
    503: "Unavailable; retry after Retry-After seconds",
}  # fmt: skip


class _Builder:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, model: type[BaseModel]) -> dict[str, str]:
        name = model.__name__
        if name not in self.schemas:
            schema = model.model_json_schema(by_alias=True, ref_template=REF)
            self.schemas.update(schema.pop("$defs", {}))
            self.schemas[name] = schema
        return {"$ref": REF.format(model=name)}

    def json(self, description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": schema}},
            **extra,
        }

    def errors(self, by_status: dict[int, list[str]]) -> dict[str, Any]:
        answers = {}
        for status, codes in by_status.items():
            schema = self.ref(ErrorBody)  # one error type for every answer; codes listed below
            extra: dict[str, Any] = {}
            if status == 503:
                extra["headers"] = {
                    "Retry-After": {
                        "description": "Seconds to wait before retrying.",
                        "schema": {"type": "integer"},
                    }
                }
            answers[str(status)] = self.json(
                f"{STATUS_TEXT[status]}: {', '.join(codes)}.", schema, **extra
            )
        return answers


IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes retries safe: the same key with the same body within 24 h returns "
    "the first answer and queues nothing again.",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_KEY_CHARS,
        "pattern": f"^[!-~]{{1,{MAX_KEY_CHARS}}}$",
        "examples": ["order-1042-confirmation"],
    },
}
#: Headers of a 202.
ACCEPTED_HEADERS = {
    "Idempotent-Replayed": {
        "description": "true when the answer is the stored one of an earlier request with "
        "the same Idempotency-Key (nothing new was queued).",
        "schema": {"type": "string", "enum": ["true"]},
    },
}
LOCATION = {
    "Location": {
        "description": "The job's status: GET /email/{id}.",
        "schema": {"type": "string", "format": "uri-reference"},
    }
}
TAGS = [
    {"name": "email", "description": "Send mail and follow each job."},
    {"name": "operations", "description": "Health, readiness and metrics."},
    {"name": "documentation", "description": "This document, for programs and people."},
]


def build_openapi(version: str) -> dict[str, Any]:
    """The whole document; every error code of :func:`trimail.errors.error_codes` is in it."""
    b = _Builder()
    message = b.ref(SendRequest)
    batch = {"type": "array", "items": message, "minItems": 1, "maxItems": MAX_BATCH}
    public: list[dict[str, list[str]]] = []  # no authentication
    paths: dict[str, Any] = {
        "/email/send": {
            "post": {
                "operationId": "send_email",
                "tags": ["email"],
                "summary": "Send one email",
                "description": "Validates the message and queues it; answers 202 at once. "
                "Delivery happens in the background; follow it with GET /email/{id}.",
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": message}},
                },
                "responses": {
                    "202": b.json(
                        "Queued.",
                        b.ref(Accepted),
                        headers={**LOCATION, **ACCEPTED_HEADERS},
                        links={
                            "status": {
                                "operationId": "email_status",
                                "parameters": {"job_id": "$response.body#/id"},
                                "description": "Follow the job.",
                            }
                        },
                    ),
                    **b.errors(SUBMIT_ERRORS),
                },
            }
        },
        "/email/batch": {
            "post": {
                "operationId": "send_batch",
                "tags": ["email"],
                "summary": f"Send 1 to {MAX_BATCH} emails",
                "description": "All-or-nothing: every message is validated (errors name the "
                "item index, as [3].to[0]) and all are queued, or none is.",
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": batch}},
                },
                "responses": {
                    "202": b.json(
                        "Queued, ids in order.", b.ref(BatchAccepted), headers=ACCEPTED_HEADERS
                    ),
                    **b.errors(SUBMIT_ERRORS),
                },
            }
        },
        "/email/{job_id}": {
            "get": {
                "operationId": "email_status",
                "tags": ["email"],
                "summary": "Status of a job",
                "description": "Only the API key that created the job can read it. Finished "
                "jobs are kept for TRIMAIL_STATUS_TTL (24 h by default).",
                "parameters": [
                    {
                        "name": "job_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                    }
                ],
                "responses": {
                    "200": b.json("The job.", b.ref(JobStatus)),
                    **b.errors(STATUS_ERRORS),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "tags": ["operations"],
                "summary": "Liveness, queue depth and workers",
                "security": public,
                "responses": {"200": b.json("Alive.", b.ref(Health))},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "tags": ["operations"],
                "summary": "Ready to accept mail",
                "security": public,
                "responses": {"200": b.json("Ready.", b.ref(Ready)), **b.errors(READY_ERRORS)},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics",
                "description": "Needs an API key or TRIMAIL_METRICS_KEY when either is set.",
                "responses": {
                    "200": {
                        "description": "Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **b.errors(METRICS_ERRORS),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["documentation"],
                "summary": "This document",
                "security": public,
                "responses": {"200": b.json("OpenAPI 3.1.", {"type": "object"})},
            }
        },
        "/docs": {
            "get": {
                "operationId": "docs",
                "tags": ["documentation"],
                "summary": "This document, as a web page",
                "description": "Swagger UI, served with its assets from trimail itself (no "
                "CDN); a plain reference without JavaScript.",
                "security": public,
                "responses": {
                    "200": {
                        "description": "HTML.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/docs/assets/{name}": {
            "get": {
                "operationId": "docs_asset",
                "tags": ["documentation"],
                "summary": "A file of the web page (Swagger UI)",
                "security": public,
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": sorted(ASSETS)},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "content": {
                            content_type.partition(";")[0]: {"schema": {"type": "string"}}
                            for content_type in sorted(set(ASSETS.values()))
                        },
                    },
                    **b.errors(DOCS_ERRORS),
                },
            }
        },
    }
    codes = sorted(error_codes())
    b.schemas["ErrorDetail"]["properties"]["code"]["enum"] = codes  # the closed set
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "trimail",
            "version": version,
            "description": "Send email over HTTP: requests are validated and answered at once "
            "(202), and delivered over SMTP in the background with retries. Every error is "
            '{"error": {"code", "message", "details"?}}; the codes are: ' + ", ".join(codes) + ".",
        },
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": b.schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of TRIMAIL_API_KEYS; not needed when the server has "
                    "none (it then serves only direct connections to a loopback address).",
                }
            },
        },
        "security": [{"bearer": []}],
    }


def render_html(document: dict[str, Any]) -> str:
    """The ``/docs`` page: Swagger UI, with the plain reference for readers without JS."""
    return docs_page(f"trimail {html.escape(document['info']['version'])} API",
                     render_reference(document))  # fmt: skip


def render_reference(document: dict[str, Any]) -> str:
    """A readable reference of the document: routes, request fields with rules, answers."""
    e = html.escape
    schemas = document["components"]["schemas"]
    parts = [
        f"<h1>trimail {e(document['info']['version'])}</h1>",
        f"<p>{e(document['info']['description'])}</p>",
        '<p>Machine-readable: <a href="/openapi.json">/openapi.json</a>.</p>',
    ]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            parts.append(
                f"<h2><code>{method.upper()} {e(path)}</code> {e(operation['summary'])}</h2>"
            )
            if "description" in operation:
                parts.append(f"<p>{e(operation['description'])}</p>")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                parts.append("<table><tr><th>field<th>rule")
                for name, field in schemas["SendRequest"]["properties"].items():
                    parts.append(
                        f"<tr><td><code>{e(name)}</code><td>{e(field.get('description', ''))}"
                    )
                parts.append("</table>")
            parts.append("<table><tr><th>status<th>meaning")
            for status, answer in operation["responses"].items():
                parts.append(f"<tr><td>{e(status)}<td>{e(answer['description'])}")
            parts.append("</table>")
    return "\n".join(parts)


def dump(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, indent=1).encode()
