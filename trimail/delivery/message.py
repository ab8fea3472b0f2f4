"""Building the MIME message and its SMTP envelope from a validated request, and checking it.

The common shapes are written by :func:`trimail.delivery.compose.compose`, fast;
the rest by the email package (:func:`build_message`), the reference, serialized
with ``email.policy.SMTP`` (CRLF line endings, lines folded to 78 columns) or
``SMTPUTF8`` when an address needs it. Either way the final bytes are checked:
line endings, and a header block (and MIME part heads) holding exactly the
headers we set, so that even a gap in validation cannot put a header on the wire
that the request did not ask for.
"""

from __future__ import annotations

import email.utils
import re
from collections import Counter
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage

from ..errors import PermanentDeliveryError
from ..mailbox import Mailbox
from ..models import SendRequest
from .compose import CHUNK_BYTES, MAX_LINE_OCTETS, compose, message_id

__all__ = [
    "ASCII_POLICY",
    "MAX_LINE_OCTETS",
    "UTF8_POLICY",
    "Envelope",
    "build_envelope",
    "build_message",
    "check_line_endings",
    "message_id",
]

#: The only headers a MIME part of ours has.
_PART_HEADERS = frozenset(
    {b"content-type", b"content-transfer-encoding", b"content-disposition", b"mime-version"}
)
#: RFC 5322 field name (printable US-ASCII but the colon), then the colon.
_FIELD_NAME = re.compile(rb"([!-9;-~]+):")
_BOUNDARY = re.compile(rb';\s*boundary="([^"]+)"', re.IGNORECASE)
#: Bodies are always 7-bit (quoted-printable or base64), so no server needs 8BITMIME.
ASCII_POLICY = policy.SMTP.clone(cte_type="7bit")
#: For addresses whose local part is not ASCII: raw UTF-8 headers, sent with SMTPUTF8.
UTF8_POLICY = policy.SMTPUTF8.clone(cte_type="7bit")


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the SMTP transaction needs: the bytes, the envelope addresses, the UTF-8 flag."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    smtputf8: bool


def _address(mailbox: Mailbox) -> Address:
    # username/domain rather than addr_spec: the email package refuses to parse a
    # non-ASCII local part, which SMTPUTF8 allows and validation already checked.
    username, _, domain = mailbox.smtp_address.rpartition("@")
    return Address(display_name=mailbox.name, username=username, domain=domain)


def _needs_smtputf8(request: SendRequest) -> bool:
    mailboxes = (request.sender, *request.to, *request.cc, *request.bcc, *request.reply_to)
    return any(mailbox.needs_smtputf8 for mailbox in mailboxes)


def build_message(request: SendRequest, job_id: str, date: float | None = None) -> EmailMessage:
    """The message as the recipients will see it; Bcc never appears in it.

    ``date`` (Unix seconds) is when trimail accepted it, the message's Date;
    the same on every attempt. Default: now.
    """
    msg = EmailMessage(policy=UTF8_POLICY if _needs_smtputf8(request) else ASCII_POLICY)
    msg["From"] = _address(request.sender)
    msg["To"] = [_address(m) for m in request.to]
    if request.cc:
        msg["Cc"] = [_address(m) for m in request.cc]
    if request.reply_to:
        msg["Reply-To"] = [_address(m) for m in request.reply_to]
    msg["Subject"] = request.subject
    msg["Date"] = email.utils.formatdate(date, usegmt=True)
    msg["Message-ID"] = message_id(job_id, request.sender)
    for name, value in request.headers.items():
        msg[name] = value

    if request.text is not None:
        msg.set_content(request.text)
        if request.html is not None:
            msg.add_alternative(request.html, subtype="html")
    else:
        assert request.html is not None  # validation requires one of the two
        msg.set_content(request.html, subtype="html")
    for attachment in request.attachments:
        maintype, _, subtype = attachment.mime_type.partition("/")
        msg.add_attachment(
            attachment.content, maintype=maintype, subtype=subtype, filename=attachment.filename
        )
    return msg


def _check_headers(data: bytes, request: SendRequest) -> None:
    """Refuse bytes whose headers are not exactly the ones we set, each once, MIME parts too.

    Read on the bytes, in one pass over the header block: every line is a field
    (``name:``) or the continuation of one, none is longer than 998 octets, and
    the names are the expected ones, each present once. Then every MIME part head
    is checked the same way (:func:`_check_parts`).
    """
    end = data.find(b"\r\n\r\n")
    fields = _read_head(data if end == -1 else data[:end])
    names = Counter(name for name, _ in fields)
    required = {b"from", b"to", b"subject", b"date", b"message-id", b"mime-version"}
    required |= {b"content-type"} | {name.lower().encode("ascii") for name in request.headers}
    if request.cc:
        required.add(b"cc")
    if request.reply_to:
        required.add(b"reply-to")
    unexpected = set(names) - required - {b"content-transfer-encoding"}
    repeated = {name for name, count in names.items() if count > 1}  # a second From, Subject...
    missing = required - set(names)
    if unexpected or repeated or missing:
        raise PermanentDeliveryError(
            "built message failed the header check (unexpected: "
            f"{sorted(unexpected)}, repeated: {sorted(repeated)}, missing: {sorted(missing)})"
        )
    boundary = _boundary(fields)
    if boundary is not None and end != -1:
        _check_parts(data, end + 4, len(data), boundary)


def _read_head(head: bytes) -> list[tuple[bytes, bytes]]:
    """The fields of a header block: (lowercased name, unfolded value), or refuse it."""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n") if head else []:
        if len(line) > MAX_LINE_OCTETS:
            raise PermanentDeliveryError("built message has a header line over 998 octets")
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + line)
            continue
        field = _FIELD_NAME.match(line)
        if field is None:  # a reader would end the header block here, or worse
            raise PermanentDeliveryError(
                f"built message failed the header check (not a header field: {line[:40]!r})"
            )
        fields.append((field[1].lower(), line[field.end() :]))
    return fields


def _boundary(fields: list[tuple[bytes, bytes]]) -> bytes | None:
    """The boundary of a multipart head, ``None`` for another type; refuse one without it."""
    value = next((value for name, value in fields if name == b"content-type"), b"")
    if not value.lstrip().lower().startswith(b"multipart/"):
        return None
    found = _BOUNDARY.search(value)
    if found is None:
        raise PermanentDeliveryError("built message failed the header check (no boundary)")
    return found[1]


def _check_parts(data: bytes, start: int, end: int, boundary: bytes) -> None:
    """Check the head of every MIME part in ``data[start:end]``, found as a reader finds them.

    Parts begin at their boundary delimiter lines (RFC 2046 section 5.1.1; any
    line that starts with one counts, which finds more parts than a reader does,
    not fewer). ``data[start - 2 : start]`` is CRLF, so a delimiter right at the
    start is found too. Only heads are read, nothing is copied but them, and the
    search for delimiters is linear in the size of the content.
    """
    delimiter = b"\r\n--" + boundary
    at = data.find(delimiter, start - 2, end)
    while at != -1:
        at += len(delimiter)
        if data.startswith(b"--", at):  # the close delimiter: the rest is epilogue
            return
        following = data.find(delimiter, at, end)
        stop = end if following == -1 else following
        line_end = data.find(b"\r\n", at, stop)
        if line_end != -1:
            blank = data.find(b"\r\n\r\n", line_end, stop + 2)  # at line_end: no head
            fields = _read_head(data[line_end + 2 : stop if blank == -1 else blank])
            names = [name for name, _ in fields]
            if len(set(names)) != len(names) or not set(names) <= _PART_HEADERS:
                raise PermanentDeliveryError(
                    f"built message failed the header check (a MIME part has {names})"
                )
            inner = _boundary(fields)
            if inner is not None and blank != -1:
                _check_parts(data, blank + 4, stop, inner)
        at = following


def check_line_endings(data: bytes) -> None:
    """Refuse bytes with a CR or LF that is not part of a CRLF pair.

    A bare LF or CR is how SMTP smuggling hides a second message in one
    (``<LF>.<CR><LF>`` ends DATA for some servers, not others). The email
    package's generator normalizes line endings; this checks the final bytes,
    so that no change there can reopen the hole.
    """
    start = 0
    while start < len(data):  # in pieces, so that the GIL is free between them
        end = start + CHUNK_BYTES
        if data[end - 1 : end] == b"\r":  # a CRLF stays in one piece
            end += 1
        piece = data[start:end]
        pairs = piece.count(b"\r\n")
        if piece.count(b"\r") != pairs or piece.count(b"\n") != pairs:
            raise PermanentDeliveryError("built message has a bare CR or LF (not sent)")
        start = end


def build_envelope(request: SendRequest, job_id: str, date: float | None = None) -> Envelope:
    """Build and serialize the message; raise :class:`PermanentDeliveryError` if it is unsafe.

    :func:`~trimail.delivery.compose.compose` writes it if it can, else the email
    package does; the same checks run on the bytes of both.
    """
    data = compose(request, job_id, date)
    if data is None:
        data = build_message(request, job_id, date).as_bytes()
    check_line_endings(data)
    _check_headers(data, request)
    recipients = tuple(m.smtp_address for m in request.envelope_recipients)
    return Envelope(
        sender=request.sender.smtp_address,
        recipients=recipients,
        data=data,
        smtputf8=_needs_smtputf8(request),
    )
