"""Building the MIME message and its SMTP envelope from a validated request.

The result is serialized with ``email.policy.SMTP`` (CRLF line endings, lines
folded to 78 columns) or ``SMTPUTF8`` when an address needs it. The built header
block is parsed back and checked, so that even a gap in validation cannot put
a header on the wire that the request did not ask for.
"""

from __future__ import annotations

import email.utils
from collections import Counter
from dataclasses import dataclass
from email import errors, policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesHeaderParser

from ..errors import PermanentDeliveryError
from ..mailbox import Mailbox
from ..models import SendRequest

#: RFC 5322 section 2.1.1: no line may be longer than 998 octets plus CRLF.
MAX_LINE_OCTETS = 998
_BODY_DEFECTS = (
    errors.StartBoundaryNotFoundDefect,
    errors.CloseBoundaryNotFoundDefect,
    errors.MultipartInvariantViolationDefect,
)
#: The only headers a MIME part of ours has.
_PART_HEADERS = frozenset(
    {"content-type", "content-transfer-encoding", "content-disposition", "mime-version"}
)
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


def message_id(job_id: str, sender: Mailbox) -> str:
    """``<job_id@sender-domain>``: the job id is findable in the delivered mail."""
    domain = sender.smtp_address.rpartition("@")[2]
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        domain = "trimail.invalid"
    return f"<{job_id}@{domain}>"


def build_message(request: SendRequest, job_id: str, date: float | None = None) -> EmailMessage:
    """The message as the recipients will see it; Bcc never appears in it.

    ``date`` (Unix seconds) is when trimail accepted it, the message's Date;
    the same on every attempt. Default: now.
    """
    mailboxes = (request.sender, *request.to, *request.cc, *request.bcc, *request.reply_to)
    utf8 = any(mailbox.needs_smtputf8 for mailbox in mailboxes)
    msg = EmailMessage(policy=UTF8_POLICY if utf8 else ASCII_POLICY)
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
    """Refuse bytes whose headers are not exactly the ones we set, each once, MIME parts too."""
    head, _, _ = data.partition(b"\r\n\r\n")
    if any(len(line) > MAX_LINE_OCTETS for line in head.split(b"\r\n")):
        raise PermanentDeliveryError("built message has a header line over 998 octets")
    parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(head + b"\r\n\r\n")
    expected = {"from", "to", "subject", "date", "message-id", "mime-version", "content-type"}
    expected |= {"content-transfer-encoding", "content-disposition"}
    expected |= {name.lower() for name in request.headers}
    if request.cc:
        expected.add("cc")
    if request.reply_to:
        expected.add("reply-to")
    names = Counter(name.lower() for name in parsed)
    unexpected = set(names) - expected
    repeated = {name for name, count in names.items() if count > 1}  # a second From, Subject...
    # Parsing the head alone makes multipart defects (no body, no boundaries): ignore
    # those, but not e.g. a line without a colon, which would end the header block.
    defects = [d for d in parsed.defects if not isinstance(d, _BODY_DEFECTS)]
    if unexpected or repeated or defects:
        raise PermanentDeliveryError(
            "built message failed the header check "
            f"(unexpected: {sorted(unexpected)}, repeated: {sorted(repeated)})"
        )
    _check_parts(data.partition(b"\r\n\r\n")[2], parsed.get_boundary())


def _check_parts(body: bytes, boundary: str | None) -> None:
    """Check the head of every MIME part in ``body``, found as a reader finds them.

    Parts are split at their boundary delimiter lines (RFC 2046 section 5.1.1),
    and only their heads are parsed, so the cost does not grow with the size
    of the content.
    """
    if boundary is None:
        return
    segments = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("ascii"))
    for segment in segments[1:]:
        if segment.startswith(b"--"):  # the close delimiter: the rest is epilogue
            return
        head, _, content = segment.partition(b"\r\n")[2].partition(b"\r\n\r\n")
        part = BytesHeaderParser(policy=policy.compat32).parsebytes(head + b"\r\n\r\n")
        names = [name.lower() for name in part]
        if len(set(names)) != len(names) or not set(names) <= _PART_HEADERS:
            raise PermanentDeliveryError(
                f"built message failed the header check (a MIME part has {names})"
            )
        _check_parts(content, part.get_boundary())


def check_line_endings(data: bytes) -> None:
    """Refuse bytes with a CR or LF that is not part of a CRLF pair.

    A bare LF or CR is how SMTP smuggling hides a second message in one
    (``<LF>.<CR><LF>`` ends DATA for some servers, not others). The email
    package's generator normalizes line endings; this checks the final bytes,
    so that no change there can reopen the hole.
    """
    pairs = data.count(b"\r\n")
    if data.count(b"\r") != pairs or data.count(b"\n") != pairs:
        raise PermanentDeliveryError("built message has a bare CR or LF (not sent)")


def build_envelope(request: SendRequest, job_id: str, date: float | None = None) -> Envelope:
    """Build and serialize the message; raise :class:`PermanentDeliveryError` if it is unsafe."""
    msg = build_message(request, job_id, date)
    data = msg.as_bytes()
    check_line_endings(data)
    _check_headers(data, request)
    recipients = tuple(m.smtp_address for m in request.envelope_recipients)
    utf8 = msg.policy.utf8  # type: ignore[attr-defined]
    return Envelope(
        sender=request.sender.smtp_address, recipients=recipients, data=data, smtputf8=utf8
    )
