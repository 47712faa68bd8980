"""Email address lists as clients write them: split, parsed, checked.

Intake validates with these (``common.models``) and the dispatcher builds the envelope and
headers with them (``dispatcher.mime``), so both read an address the same way.  No pydantic
here: the dispatcher imports this module without the models.
"""

from __future__ import annotations

import email.utils
import re

ADDR_SPEC = re.compile(r"^[^@\s<>(),;:\"\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
SIMPLE_NAMED = re.compile(r"^([^\"<>@,;:\\()\[\]]*?)\s*<([^<>\s]+)>$")  # Name <addr>


# What no header line may hold besides CR and LF: the other C0 controls but tab, DEL, the C1
# controls (U+0085 NEL among them) and the Unicode line and paragraph separators.  The MIME
# builder refuses some; an SMTP server or a mail client would break the line at others.
UNSENDABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def no_line_breaks(value: str) -> str:
    """The value unchanged; raises when it could inject a header (CR, LF) or holds a
    character no header can carry (control characters but tab, Unicode line separators)."""
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain CR or LF (header injection)")
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    bad = UNSENDABLE.search(value)
    if bad is not None:
        raise ValueError(
            f"must not contain the character U+{ord(bad.group()):04X} (control characters "
            "other than tab and Unicode line separators cannot be sent in a header)"
        )
    return value


def _check_address(addr: str) -> str:
    if not ADDR_SPEC.match(addr):
        raise ValueError(f"{addr!r} is not an email address")
    return addr


def split_addresses(text: str) -> list[str]:
    """The comma-separated pieces of an address header, keeping commas inside quotes or <>."""
    if "," not in text or ('"' not in text and "<" not in text and "\\" not in text):
        return [piece.strip() for piece in text.split(",") if piece.strip()]  # common cases
    pieces, current, quoted, angle, escaped = [], [], False, 0, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char in "<>" and not quoted:
            angle += 1 if char == "<" else -1
        elif char == "," and not quoted and angle <= 0:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return [piece.strip() for piece in pieces if piece.strip()]


def parse_address_list(value: str | list[str]) -> list[tuple[str, str]]:
    """(name, address) pairs from a list or a comma-separated string; raises on a bad one."""
    items = [value] if isinstance(value, str) else value
    pairs = []
    for item in items:
        no_line_breaks(item)
        for piece in split_addresses(item):
            simple = SIMPLE_NAMED.match(piece)
            if ADDR_SPEC.match(piece) or simple:  # these need no RFC 5322 parser
                name, addr = simple.groups() if simple else ("", piece)
                pairs.append((" ".join(name.split()), _check_address(addr)))
                continue
            name, addr = email.utils.parseaddr(piece)
            if not addr:
                raise ValueError(f"{piece!r} is not an email address")
            pairs.append((name, _check_address(addr)))
    return pairs
