"""Tool definitions for LLM agents, generated from the request model.

``openai_tools()`` has the function-calling shape of the OpenAI-style APIs,
``anthropic_tools()`` the ``input_schema`` shape; both carry the same JSON Schema
of ``POST /email/send``, with references inlined (some tool APIs refuse them).
Each gives two tools: ``send_email`` and ``email_status``.
"""

from __future__ import annotations

import copy
from typing import Any

from .models import SendRequest

SEND_DESCRIPTION = (
    "Send an email. It is queued and delivered in the background; the result is a job id. "
    "Give text, html or both. Addresses are 'addr' or 'Name <addr>'. On a validation_error "
    "the answer lists each field and rule to fix."
)
STATUS_DESCRIPTION = (
    "Check an email sent earlier: queued, sending, retrying, sent, failed or undelivered, "
    "with the last SMTP error if any."
)


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace every ``$ref`` to ``$defs`` by the definition itself; drop ``$defs``."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                name = node["$ref"].rsplit("/", 1)[-1]
                return resolve(copy.deepcopy(definitions[name]))
            return {key: resolve(value) for key, value in node.items() if key != "title"}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return dict(resolve(schema))


def send_schema() -> dict[str, Any]:
    """The JSON Schema of one email, as the API takes it (``from``, not ``from_``)."""
    return _inline(SendRequest.model_json_schema(by_alias=True))


STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"id": {"type": "string", "description": "The job id send_email returned."}},
    "required": ["id"],
    "additionalProperties": False,
}


def openai_tools() -> list[dict[str, Any]]:
    """``send_email`` and ``email_status`` as function-calling tools."""
    return [
        {
            "type": "function",
            "function": {"name": name, "description": description, "parameters": schema},
        }
        for name, description, schema in _tools()
    ]


def anthropic_tools() -> list[dict[str, Any]]:
    """``send_email`` and ``email_status`` with ``input_schema``."""
    return [
        {"name": name, "description": description, "input_schema": schema}
        for name, description, schema in _tools()
    ]


def _tools() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("send_email", SEND_DESCRIPTION, send_schema()),
        ("email_status", STATUS_DESCRIPTION, STATUS_SCHEMA),
    ]
