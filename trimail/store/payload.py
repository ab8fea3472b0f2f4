"""A validated request as bytes for a durable store, and back, without validating again.

The bytes are JSON. What comes back from a store is what trimail itself wrote
after validation, so decoding builds the request directly (``model_construct``)
instead of re-running every rule: re-checking each address would cost more than
the rest of an attempt's bookkeeping.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from ..mailbox import Mailbox
from ..models import Attachment, SendRequest

VERSION = 1


def _mailbox(mailbox: Mailbox) -> list[str | None]:
    return [mailbox.name, mailbox.address, mailbox.ascii_address]


def _from_mailbox(fields: list[Any]) -> Mailbox:
    name, address, ascii_address = fields
    return Mailbox(name=name, address=address, ascii_address=ascii_address)


def encode(request: SendRequest) -> bytes:
    """The request as JSON bytes (attachments base64-encoded)."""
    return json.dumps(
        {
            "v": VERSION,
            "from": _mailbox(request.sender),
            "to": [_mailbox(m) for m in request.to],
            "cc": [_mailbox(m) for m in request.cc],
            "bcc": [_mailbox(m) for m in request.bcc],
            "reply_to": [_mailbox(m) for m in request.reply_to],
            "subject": request.subject,
            "text": request.text,
            "html": request.html,
            "headers": request.headers,
            "attachments": [
                [a.filename, a.content_type, base64.b64encode(a.content).decode("ascii")]
                for a in request.attachments
            ],
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


def decode(data: bytes) -> SendRequest:
    """The request :func:`encode` wrote; raises ``ValueError`` for anything else."""
    fields = json.loads(data)
    if fields.get("v") != VERSION:
        raise ValueError(f"unknown payload version {fields.get('v')!r}")
    return SendRequest.model_construct(
        from_=_from_mailbox(fields["from"]),
        to=[_from_mailbox(m) for m in fields["to"]],
        cc=[_from_mailbox(m) for m in fields["cc"]],
        bcc=[_from_mailbox(m) for m in fields["bcc"]],
        reply_to=[_from_mailbox(m) for m in fields["reply_to"]],
        subject=fields["subject"],
        text=fields["text"],
        html=fields["html"],
        headers=fields["headers"],
        attachments=[
            Attachment.model_construct(
                filename=filename, content_type=content_type, content=base64.b64decode(content)
            )
            for filename, content_type, content in fields["attachments"]
        ],
    )


def memory_size(request: SendRequest) -> int:
    """Roughly the bytes a request holds in memory: its texts and attachments."""
    size = 1024 + sum(len(m.address) + len(m.name) for m in request.envelope_recipients)
    for text in (request.subject, request.text, request.html):
        if text is not None:
            size += len(text) * (1 if text.isascii() else 4)
    size += sum(len(name) + len(value) for name, value in request.headers.items())
    return size + sum(len(a.content) + len(a.filename) for a in request.attachments)
