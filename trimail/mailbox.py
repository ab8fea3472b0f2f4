"""Text that may become a header, and email addresses: the checks behind every header.

Anything that ends up in a header (subject, names, addresses, header names and
values, filenames) is refused if it holds a control or line-break character,
or an RFC 2047 encoded-word that decodes to one, so header injection cannot be
expressed in a request that passes validation. No I/O.
"""

from __future__ import annotations

import binascii
import email.header
import functools
import re
from dataclasses import dataclass
from typing import Any

from email_validator import EmailNotValidError, ValidatedEmail, validate_email
from pydantic import ValidationInfo
from pydantic_core import PydanticCustomError

#: C0 controls (CR, LF and TAB included), DEL, C1 controls (NEL included) and the
#: Unicode line and paragraph separators: none of them may reach a header.
FORBIDDEN_IN_HEADERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: Lone UTF-16 surrogates: JSON can carry them (``"\\ud800"``), UTF-8 cannot.
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Encoded-words as lenient readers (the email package's among them) see them: with
#: blanks inside or an empty charset too, not only in the strict RFC 2047 form.
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[bBqQ]\?[^?]*\?=")
#: A name cannot be folded: it must fit a 998-octet line even at 4 octets a character.
MAX_DISPLAY_NAME_CHARS = 200
#: A display name (quoted and escaped, up to about 400) and an address (RFC 5321
#: paths are at most 256 octets) fit well within this; longer is refused unread.
MAX_MAILBOX_CHARS = 1024


def check_header_text(value: str, what: str, field: str | None = None) -> str:
    """Return ``value`` if it may appear in a header, else raise a ``control_character`` error.

    ``field``, when given, names the request field in the error (``headers.X-Tag``).
    """
    where = {"field": field} if field else {}
    check_encodable(value, what, field)
    found = FORBIDDEN_IN_HEADERS.search(value)
    if found:
        raise PydanticCustomError(
            "control_character",
            "{what} must not contain control or line-break characters (found U+{codepoint})",
            {"what": what, "codepoint": f"{ord(found.group()):04X}", **where},
        )
    for word in _ENCODED_WORD.findall(value):
        try:
            decoded = "".join(
                part.decode(charset or "ascii", errors="replace")
                if isinstance(part, bytes)
                else part
                for part, charset in email.header.decode_header(word)
            )
        except (LookupError, ValueError, binascii.Error):
            decoded = "\x00"  # undecodable: refuse rather than guess what a reader makes of it
        if FORBIDDEN_IN_HEADERS.search(decoded):
            raise PydanticCustomError(
                "encoded_control_character",
                "{what} must not contain an RFC 2047 encoded-word that decodes to a control "
                "or line-break character",
                {"what": what, **where},
            )
    return value


def check_encodable(value: str, what: str, field: str | None = None) -> str:
    """Return ``value`` if it can be encoded as UTF-8, else raise ``invalid_unicode``."""
    if _SURROGATE.search(value):
        raise PydanticCustomError(
            "invalid_unicode",
            "{what} contains an unpaired surrogate (U+D800 to U+DFFF), which is not text",
            {"what": what, **({"field": field} if field else {})},
        )
    return value


def _split_name_and_address(value: str) -> tuple[str, str]:
    """``"Name <addr>"`` into name and address, else ``("", value)``, in linear time.

    The same result as fullmatching ``(.*?)\\s*<([^<>]*)>``, which backtracks
    quadratically on a long run of blanks (minutes for a few hundred kB).
    """
    if value.endswith(">"):
        name, bracket, address = value[:-1].rpartition("<")
        if bracket and ">" not in address:
            return name.rstrip(), address
    return "", value


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A validated address with its optional display name.

    ``address`` keeps the domain in Unicode; ``ascii_address`` has it IDNA-encoded
    and is ``None`` when the local part itself is not ASCII (SMTPUTF8 only).
    """

    name: str
    address: str
    ascii_address: str | None

    @property
    def needs_smtputf8(self) -> bool:
        return self.ascii_address is None

    @property
    def smtp_address(self) -> str:
        """The address as written in the SMTP envelope and headers."""
        return self.ascii_address or self.address

    def __str__(self) -> str:
        return f"{self.name} <{self.address}>" if self.name else self.address


#: Mailboxes parsed lately, by their text. A service sends from a few addresses to
#: recurring recipients, and checking an address (email-validator) is about a tenth
#: of a request's CPU. At most 4096 entries of at most MAX_MAILBOX_CHARS: a few MiB.
MAILBOX_CACHE_SIZE = 4096


def parse_mailbox(value: Any, local_domains: bool = False) -> Mailbox:
    """Parse ``"Name <addr>"`` or ``"addr"``; raise ``invalid_address`` if it is not one.

    ``local_domains`` (dev mode only) accepts a one-label domain such as ``localhost``.
    """
    if isinstance(value, Mailbox):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "Input should be a valid string")
    return parse_text(value, local_domains)


def validate_mailbox(value: Any, info: ValidationInfo) -> Mailbox:
    """:func:`parse_mailbox` as a pydantic validator: ``local_domains`` from the context."""
    return parse_mailbox(value, bool((info.context or {}).get("local_domains")))


@functools.lru_cache(maxsize=MAILBOX_CACHE_SIZE)
def parse_text(value: str, local_domains: bool = False) -> Mailbox:
    """:func:`parse_mailbox` for text; remembered (errors are not: they are raised anew)."""
    if len(value) > MAX_MAILBOX_CHARS:  # before any check whose cost grows with the length
        raise PydanticCustomError(
            "address_too_long",
            "an address, with its display name, must be at most {limit} characters",
            {"limit": MAX_MAILBOX_CHARS},
        )
    check_header_text(value, "an address")
    name, address = _split_name_and_address(value.strip())
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if len(name) > MAX_DISPLAY_NAME_CHARS:
        raise PydanticCustomError(
            "name_too_long",
            "a display name must be at most {limit} characters",
            {"limit": MAX_DISPLAY_NAME_CHARS},
        )
    local, _, domain = address.rpartition("@")
    if local_domains and _LOCAL_DOMAIN.fullmatch(domain):
        # Checked as the same mailbox under the reserved .test domain, then given back its own.
        valid = _validate(f"{local}@{domain}.test", address, test_environment=True)
        cut = len(".test")
        return Mailbox(name=name, address=valid.normalized[:-cut],
                       ascii_address=(valid.ascii_email or "")[:-cut] or None)  # fmt: skip
    valid = _validate(address, address)
    return Mailbox(name=name, address=valid.normalized, ascii_address=valid.ascii_email)


#: A one-label domain (``localhost``, ``devbox``): accepted in dev mode only.
_LOCAL_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _validate(checked: str, address: str, test_environment: bool = False) -> ValidatedEmail:
    try:
        return validate_email(checked, check_deliverability=False, allow_smtputf8=True,
                              test_environment=test_environment)  # fmt: skip
    except EmailNotValidError as exc:
        raise PydanticCustomError(
            "invalid_address",
            "'{address}' is not a valid email address: {reason}",
            {"address": address, "reason": str(exc)},
        ) from None
