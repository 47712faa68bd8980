"""Email address lists as clients write them: split, parsed, checked; and Message-IDs.

Intake validates with these (``common.models``) and the dispatcher builds the envelope and
headers with them (``dispatcher.mime``), so both read an address the same way.  No pydantic
here: the dispatcher imports this module without the models.
"""

from __future__ import annotations

import email.utils
import functools
import re
import secrets

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
    return [pair for item in items for pair in _parse_item(item)]


@functools.lru_cache(maxsize=4096)
def _parse_item(item: str) -> tuple[tuple[str, str], ...]:
    """One string's pairs.  Cached: intake reads a message's addresses several times
    (validation, recipients, the Message-ID's domain), and senders repeat across messages."""
    no_line_breaks(item)
    pairs = []
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
    return tuple(pairs)


def angle_brackets(value: str) -> str:
    """A Message-ID or Content-ID as headers carry it: ``<value>`` (kept if already bracketed)."""
    value = value.strip()
    return value if value.startswith("<") and value.endswith(">") else f"<{value}>"


def sender_domain(sender: str) -> str:
    """The domain of a From value (``Name <addr>`` or ``addr``), lower-cased."""
    return parse_address_list(sender)[0][1].rpartition("@")[2].lower()


def new_message_id(domain: str, now: float) -> str:
    """A fresh, globally unique ``<time.random@domain>``.

    The enqueue time in milliseconds, then 80 random bits: unique without coordination, and
    ordered by time, so the index on stored Message-IDs grows at its end instead of dirtying
    a random page per message (measured, storing 1000 messages next to 40,000: 10.9 ms with
    random ids, 7.6 ms with these, 7.1 ms without the index).  A fully qualified domain on
    the right, because a Message-ID without one is a common spam-filter signal.
    """
    return f"<{int(now * 1000):x}.{secrets.token_hex(10)}@{domain}>"


VERP_PREFIX = "bounce+"  # the local part of a VERP envelope sender: bounce+<token>@verp_domain


def new_verp_token(now: float) -> str:
    """An unguessable token naming one message in its VERP envelope sender.

    Lower-case hex (mail systems may fold the case of a local part), time first for the same
    reason as ``new_message_id``, then 64 random bits: nobody who has not seen the address can
    make up one that matches a message.  ``bounce+`` and 27 characters fit the 64-character
    limit of a local part.
    """
    return f"{int(now * 1000):x}{secrets.token_hex(8)}"


def verp_address(token: str, domain: str) -> str:
    """The envelope sender that brings a message's bounces back with its token."""
    return f"{VERP_PREFIX}{token}@{domain}"


def verp_tokens(text: str, domain: str) -> list[str]:
    """Every VERP token of ``domain`` in a piece of text (headers of a bounce), lower-cased."""
    pattern = re.compile(rf"{re.escape(VERP_PREFIX)}([0-9a-z]+)@{re.escape(domain)}\b", re.I)
    return [token.lower() for token in pattern.findall(text)]
