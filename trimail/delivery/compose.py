"""The fast path: the common shapes of message written as bytes, without the email package.

:func:`compose` writes what :func:`~trimail.delivery.message.build_message` means
(headers in the same order, MIME tree, decoded texts, names and files) for a fraction
of its CPU (a fifteenth for a text and HTML mail, a fifth with a 5 MiB attachment),
CPU spent in threads that share the GIL with the event loop. The email package stays
the reference; ``tests/test_compose.py`` holds one to the other.

It returns ``None``, and the caller uses the email package, when:

* a mailbox needs SMTPUTF8 (a non-ASCII local part): raw UTF-8 headers under
  another policy, and rare;
* a subject, extra header value, display name or filename holds ``=?``: the email
  package decodes what looks like an RFC 2047 encoded-word when a header is set,
  so a pre-encoded subject reaches the reader decoded; written verbatim it would not;
* an extra header the email package parses as structured (``Sender``, ``Resent-*``,
  ``Orig-Date``): it rewrites those as addresses or dates;
* an attachment type that is not ``type/subtype`` in RFC 2045 tokens, or is
  ``multipart/*`` or ``message/*`` (guessed from a name such as ``x.eml``);
* a filename whose RFC 2231 form does not fit a line (long non-ASCII names), which
  would need RFC 2231 continuations;
* a header line that would pass 998 octets anyway: blanks that folding cannot
  split (a run of more than 78, or the blanks after a long last word).

Every line ends in CRLF and fits 998 octets; header lines fit 78 columns unless a
word (a URL, a quoted name, final blanks) is longer. Bodies are 7bit,
quoted-printable or base64, so no server needs 8BITMIME.
"""

from __future__ import annotations

import binascii
import email.utils
import re
import secrets
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from urllib.parse import quote

from ..mailbox import Mailbox
from ..models import MAX_HEADER_NAME_CHARS, SendRequest

#: RFC 5322 section 2.1.1: no line may be longer than 998 octets plus CRLF.
MAX_LINE_OCTETS = 998
#: RFC 5322 section 2.1.1: lines SHOULD fit 78 characters (the email package's limit too).
MAX_COLUMNS = 78
#: Input bytes per binascii call (and per count in check_line_endings). Each call
#: holds the GIL for its whole run, so big payloads go in pieces and the event loop's
#: thread can take the GIL in between: 256 KiB is about 0.3 ms of base64 here
#: (measured). 57 * 4599, so that every base64 line but the last is full.
CHUNK_BYTES = 57 * 4599
#: A word longer than this is encoded: it would not fit a line after the longest header name.
_LONGEST_RAW_WORD = MAX_LINE_OCTETS - MAX_HEADER_NAME_CHARS - 2
#: Bytes per encoded-word: 56 base64 characters, so that ``Subject: =?utf-8?b?...?=`` fits
#: 78 columns (and every word the 75 of RFC 2047 section 2).
_WORD_BYTES = 42
#: Header fields the email package parses as addresses or dates (its header registry).
_RESENT = ("date", "sender", "from", "to", "cc", "bcc")
_STRUCTURED = frozenset(["sender", "orig-date", *(f"resent-{name}" for name in _RESENT)])
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_TOKEN_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+")
_BLANKS = re.compile(r"( +)")
#: RFC 2231 attribute-char, besides what ``quote`` always keeps (letters, digits, ``_.-~``).
_ATTRIBUTE_CHARS = "!#$&+^`|"
#: Bytes that quoted-printable writes as ``=XX``: three characters for one byte.
_QP_ESCAPED = bytes([*range(0, 9), *range(11, 13), *range(14, 32), 61, *range(127, 256)])


def message_id(job_id: str, sender: Mailbox) -> str:
    """``<job_id@sender-domain>``: the job id is findable in the delivered mail."""
    domain = sender.smtp_address.rpartition("@")[2]
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        domain = "trimail.invalid"
    return f"<{job_id}@{domain}>"


def compose(request: SendRequest, job_id: str, date: float | None) -> bytes | None:
    """The message as bytes (CRLF, headers, blank line, body), or ``None`` for the reference.

    ``None`` for the cases listed in the module docstring. Bcc never appears.
    Big payloads are encoded in pieces of :data:`CHUNK_BYTES`.
    """
    shown = (request.sender, *request.to, *request.cc, *request.reply_to)
    if any(m.needs_smtputf8 for m in (*shown, *request.bcc)) or any("=?" in m.name for m in shown):
        return None
    headers = [_addresses("From", [request.sender]), _addresses("To", request.to)]
    if request.cc:
        headers.append(_addresses("Cc", request.cc))
    if request.reply_to:
        headers.append(_addresses("Reply-To", request.reply_to))
    subject = _unstructured("Subject", request.subject)
    extras = [_unstructured(name, value) for name, value in request.headers.items()]
    if subject is None or None in extras or _STRUCTURED & {n.lower() for n in request.headers}:
        return None
    headers += [subject, f"Date: {_date(date)}"]
    headers.append(f"Message-ID: {message_id(job_id, request.sender)}")
    headers += [field for field in extras if field is not None]  # all of them, checked above

    texts = ((request.text, "plain"), (request.html, "html"))
    bodies = [_text(body, subtype) for body, subtype in texts if body is not None]
    for attachment in request.attachments:
        part = _attachment(attachment.filename, attachment.mime_type, attachment.content)
        if part is None:
            return None
        bodies.append(part)
    if len(bodies) == 1:
        head, payload, _ = bodies[0]
        headers += [head.decode("ascii"), "MIME-Version: 1.0"]
    else:
        head, payload = _multipart(bodies, request.text is not None and request.html is not None)
        headers += ["MIME-Version: 1.0", head.decode("ascii")]
    block = "\r\n".join(headers)
    if any(len(line) > MAX_LINE_OCTETS for line in block.split("\r\n")):
        return None
    return b"".join([block.encode("ascii"), b"\r\n\r\n", *payload])


# -- headers ------------------------------------------------------------------------------


def _date(date: float | None) -> str:
    """``formatdate(date, usegmt=True)`` as the email package rewrites it: ``+0000``, not GMT.

    (RFC 5322 section 4.3 lists ``GMT`` as obsolete syntax, not to be generated.)
    """
    when = datetime.fromtimestamp(time.time() if date is None else date, timezone.utc)
    return email.utils.format_datetime(when)


def _encoded_words(text: str) -> list[str]:
    """``text`` as base64 encoded-words of 68 characters at most, cut between characters."""
    data, words = text.encode("utf-8"), []
    while data:
        end = min(_WORD_BYTES, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # a UTF-8 continuation byte
            end -= 1
        words.append(f"=?utf-8?b?{binascii.b2a_base64(data[:end], newline=False).decode()}?=")
        data = data[end:]
    return words


def _fold(start: str, words: list[tuple[str, str]]) -> str:
    """``start`` and the (blanks, word) pairs, with CRLF before the blanks where a line would
    pass 78 columns; unfolding gives the text back. Never before the first word or trailing
    blanks (a line of blanks only)."""
    lines, line = [], start
    for n, (blanks, word) in enumerate(words):
        if n and word and len(line) + len(blanks) + len(word) > MAX_COLUMNS:
            lines.append(line)
            line = ""
        line += blanks + word
    return "\r\n".join([*lines, line])


def _unstructured(name: str, value: str) -> str | None:
    """``name: value``, its words that are not ASCII (or too long) as encoded-words.

    Leading blanks are dropped (as every reader drops them). Consecutive encoded
    words are encoded together with the blanks between them, since blanks between
    encoded-words mean nothing (RFC 2047 section 6.2). ``None`` if the value holds ``=?``.
    """
    value = value.lstrip(" ")
    if "=?" in value:
        return None
    if value.isascii() and len(name) + 2 + len(value) <= MAX_COLUMNS:
        return f"{name}: {value}" if value else f"{name}:"
    pieces = _BLANKS.split(value)  # words at even indexes, runs of blanks at odd ones
    words: list[tuple[str, str]] = []
    i = 0
    while i < len(pieces):
        blanks = pieces[i - 1] if i else " "
        if _raw(pieces[i]):
            words.append((blanks, pieces[i]))
            i += 2
            continue
        end = i + 2
        while end < len(pieces) and not _raw(pieces[end]):
            end += 2
        encoded = _encoded_words("".join(pieces[i : end - 1]))
        words += [(blanks, encoded[0]), *((" ", word) for word in encoded[1:])]
        i = end
    return _fold(f"{name}:", words)


def _raw(word: str) -> bool:
    """Whether a word of unstructured text goes out as it is (not as encoded-words)."""
    return word.isascii() and len(word) <= _LONGEST_RAW_WORD


def _mailbox(mailbox: Mailbox) -> list[str]:
    """A mailbox as the words of a header: the name (atoms, quoted or encoded), then ``<addr>``."""
    name, address = mailbox.name, mailbox.smtp_address
    if not name:
        return [address]
    if not name.isascii():
        return [*_encoded_words(name), f"<{address}>"]
    if _ATOMS.fullmatch(name):
        return [*name.split(" "), f"<{address}>"]
    return [_quoted(name), f"<{address}>"]


def _quoted(text: str) -> str:
    """An RFC 5322 quoted-string: ``\\`` and ``"`` escaped (validation let no control in)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _addresses(name: str, mailboxes: Sequence[Mailbox]) -> str:
    """An address list, folded at the blanks between words (after commas, between names)."""
    words: list[str] = []
    for mailbox in mailboxes:
        if words:
            words[-1] += ","
        words += _mailbox(mailbox)
    return _fold(f"{name}:", [(" ", word) for word in words])


# -- bodies -------------------------------------------------------------------------------

#: A part: its header lines, its encoded payload in pieces, and whether it is 7bit.
Part = tuple[bytes, list[bytes], bool]


def _text(text: str, subtype: str) -> Part:
    """A text part with the line handling of the email package's ``set_content``.

    7bit if ASCII with lines of at most 78 octets; else quoted-printable, or base64
    when that is smaller (mostly non-ASCII) or a line is too long to encode in pieces.
    """
    lines = text.encode("utf-8").splitlines()  # at CR, LF and CRLF, as set_content does
    body = b"\r\n".join(lines) + b"\r\n"
    longest = max(map(len, lines), default=0)
    if longest <= MAX_COLUMNS and body.isascii():
        cte, payload = "7bit", [body]
    elif longest + 2 <= CHUNK_BYTES and not _smaller_as_base64(body[:CHUNK_BYTES]):
        cte, payload = "quoted-printable", _quoted_printable(body)
    else:
        cte, payload = "base64", _base64(body)
    head = f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}'
    return head.encode("ascii"), payload, cte == "7bit"


def _smaller_as_base64(sample: bytes) -> bool:
    """Whether base64 (4 characters for 3 bytes) beats quoted-printable (3 for an escaped byte)."""
    escaped = len(sample) - len(sample.translate(None, _QP_ESCAPED))
    return len(sample) + 2 * escaped > len(sample) * 4 // 3


def _quoted_printable(body: bytes) -> list[bytes]:
    """``body`` (CRLF lines that fit CHUNK_BYTES with their CRLF) in pieces ending at line ends.

    ``b2a_qp`` writes soft breaks as ``=\\r\\n`` when the text's first line ends
    in CRLF, which every piece's does.
    """
    pieces, start = [], 0
    while start < len(body):
        end = body.rfind(b"\n", start, start + CHUNK_BYTES) + 1
        assert end > start, "a line longer than a piece"
        pieces.append(binascii.b2a_qp(body[start:end]))
        start = end
    return pieces


def _base64(data: bytes) -> list[bytes]:
    """``data`` in base64 lines of 76 characters, each ended by CRLF, in pieces."""
    pieces = []
    for start in range(0, len(data), CHUNK_BYTES):
        encoded = binascii.b2a_base64(data[start : start + CHUNK_BYTES], newline=False)
        lines = [encoded[i : i + 76] for i in range(0, len(encoded), 76)]
        pieces.append(b"\r\n".join(lines) + b"\r\n")
    return pieces


def _attachment(filename: str, mime_type: str, content: bytes) -> Part | None:
    """A base64 part with its filename, or ``None`` (see the module docstring)."""
    composite = mime_type.lower().startswith(("multipart/", "message/"))
    if composite or not _TOKEN_TYPE.fullmatch(mime_type) or "=?" in filename:
        return None
    if filename.isascii():
        parameter = f"filename={_quoted(filename)}"
    else:
        parameter = "filename*=utf-8''" + quote(filename, safe=_ATTRIBUTE_CHARS)
    disposition = f"Content-Disposition: attachment; {parameter}"
    if len(disposition) > MAX_COLUMNS:
        disposition = f"Content-Disposition: attachment;\r\n {parameter}"
    if len(parameter) + 1 > MAX_LINE_OCTETS:  # would need RFC 2231 continuations
        return None
    head = f"Content-Type: {mime_type}\r\nContent-Transfer-Encoding: base64\r\n{disposition}"
    return head.encode("ascii"), _base64(content), False


def _boundary(avoid: Sequence[bytes]) -> str:
    """A random boundary found in none of ``avoid`` (the 7bit payloads and the part heads).

    ``=_`` cannot occur in quoted-printable (``=`` is followed by hex or CRLF) nor
    in base64, so those payloads need no search.
    """
    while True:
        boundary = "=_" + secrets.token_hex(12)
        if not any(boundary.encode("ascii") in text for text in avoid):
            return boundary


def _multipart(parts: list[Part], alternative: bool) -> tuple[bytes, list[bytes]]:
    """The Content-Type line and body: multipart/alternative (text, html) if ``alternative``,
    inside multipart/mixed if attachments follow."""
    avoid = [head for head, _, _ in parts]
    avoid += [payload[0] for _, payload, is_7bit in parts if is_7bit]
    if alternative:
        boundary = _boundary(avoid)
        head, body = _join(parts[:2], "alternative", boundary)
        parts = [(head, body, False), *parts[2:]]
        avoid.append(boundary.encode("ascii"))
    if len(parts) == 1:
        return parts[0][0], parts[0][1]
    return _join(parts, "mixed", _boundary(avoid))


def _join(parts: list[Part], subtype: str, boundary: str) -> tuple[bytes, list[bytes]]:
    delimiter = f"--{boundary}\r\n".encode("ascii")
    body: list[bytes] = []
    for head, payload, _ in parts:
        body += [delimiter, head, b"\r\n\r\n", *payload, b"\r\n"]
    body.append(f"--{boundary}--\r\n".encode("ascii"))
    return f'Content-Type: multipart/{subtype}; boundary="{boundary}"'.encode("ascii"), body
