"""Reading delivery status notifications (bouncer/dsn.py): each shape of tests/fixtures/dsn,
and what must never count as one.  The rules of the suppression list (common/suppression.py)
and the VERP address (common/addresses.py) are checked here too, without a mailbox."""

from __future__ import annotations

import base64

import pytest

from bouncer import dsn
from common.addresses import new_verp_token, verp_address, verp_tokens
from common.suppression import enhanced_status, kills_address
from tests.support.factories import T0
from tests.support.imap import dsn_mail

MESSAGE_ID = "<19a2b3c4d5e.0123456789abcdef0123@example.net>"
RECIPIENT = "ann@example.org"
SENDER = "bounce+19a2b3c4d5e0123456789abcdef@bounces.example.net"

# fixture: (shape, action, status, kind, words of the diagnostic, Message-ID of the original)
EXPECTED = {
    "postfix.eml": ("rfc3464", "failed", "5.1.1", "hard", "User unknown", MESSAGE_ID),
    "postfix-delayed.eml": ("rfc3464", "delayed", "4.4.1", "soft", "Connection timed out",
                            MESSAGE_ID),
    "postfix-soft.eml": ("rfc3464", "failed", "4.2.2", "soft", "mailbox full", MESSAGE_ID),
    "postfix-policy.eml": ("rfc3464", "failed", "5.7.1", "hard", "spam", MESSAGE_ID),
    "exim.eml": ("exim", "failed", "5.1.1", "hard", "no mailbox by that name", MESSAGE_ID),
    "gmail.eml": ("rfc3464", "failed", "5.1.1", "hard", "does not exist. Please check the 550",
                  MESSAGE_ID),
    "gmail-plain.eml": ("gmail", "failed", "5.1.1", "hard", "no such user", MESSAGE_ID),
    "ses.eml": ("rfc3464", "failed", "5.1.1", "hard", "user unknown", None),
    "ses-notification.eml": ("ses", "failed", "5.1.1", "hard", "user unknown", MESSAGE_ID),
    "ses-complaint.eml": ("ses", "complained", None, "complaint", "abuse", MESSAGE_ID),
    "arf.eml": ("arf", "complained", None, "complaint", "abuse", MESSAGE_ID),
}  # fmt: skip
NOT_NOTIFICATIONS = ("autoreply.eml", "vague.eml")


def read(name: str, sender: str = SENDER) -> dsn.Notification | None:
    raw = dsn_mail(name, message_id=MESSAGE_ID, recipient=RECIPIENT, sender=sender)
    return dsn.parse(dsn.load(raw))


@pytest.mark.parametrize("name", EXPECTED)
def test_each_shape_is_read_for_what_it_says(name):
    shape, action, status, kind, words, original = EXPECTED[name]
    notice = read(name)
    assert notice is not None and notice.shape == shape
    [recipient] = notice.recipients
    assert (recipient.address, recipient.action, recipient.status, recipient.kind) == (
        RECIPIENT, action, status, kind,
    )  # fmt: skip
    assert words in recipient.diagnostic
    if original is None:  # SES replaced the Message-ID: only the VERP address names it
        assert MESSAGE_ID not in notice.message_ids
    else:
        assert notice.message_ids[0] == original


@pytest.mark.parametrize("name", EXPECTED)
def test_each_shape_carries_the_verp_address_back(name):
    tokens = verp_tokens(" ".join(read(name).envelope), "bounces.example.net")
    assert "19a2b3c4d5e0123456789abcdef" in tokens


@pytest.mark.parametrize("name", NOT_NOTIFICATIONS)
def test_an_auto_reply_or_vague_prose_is_not_a_notification(name):
    assert read(name) is None


def test_a_report_of_another_type_or_without_recipients_is_not_one():
    raw = dsn_mail("postfix.eml", message_id=MESSAGE_ID, recipient=RECIPIENT, sender=SENDER)
    receipt = raw.replace(b"report-type=delivery-status", b"report-type=disposition-notification")
    assert dsn.parse(dsn.load(receipt)) is None
    no_action = raw.replace(b"Action: failed", b"X-Action: failed")
    assert dsn.parse(dsn.load(no_action)) is None


def test_plain_text_without_x_failed_recipients_is_not_one():
    raw = dsn_mail("exim.eml", message_id=MESSAGE_ID, recipient=RECIPIENT, sender=SENDER)
    assert dsn.parse(dsn.load(raw.replace(b"X-Failed-Recipients:", b"X-Other:"))) is None


def test_a_mail_that_is_not_json_or_not_ses_is_not_an_ses_notification():
    for body in (b"{not json", b'{"notificationType": "Delivery"}', b"[1, 2]"):
        raw = b"From: x@y\r\nContent-Type: text/plain\r\n\r\n" + body
        assert dsn.parse(dsn.load(raw)) is None


def test_several_recipients_of_one_exim_bounce_each_get_their_own_reply():
    raw = dsn_mail("exim.eml", message_id=MESSAGE_ID, recipient=RECIPIENT, sender=SENDER)
    second = (
        b"\r\n  bob@example.org\r\n    host mx.example.org [192.0.2.25]\r\n"
        b"    SMTP error from remote mail server after RCPT TO:<bob@example.org>:\r\n"
        b"    452 4.2.2 <bob@example.org>: over quota\r\n"
    )
    raw = raw.replace(
        b"X-Failed-Recipients: " + RECIPIENT.encode(),
        b"X-Failed-Recipients: " + RECIPIENT.encode() + b", bob@example.org",
    )
    raw = raw.replace(
        b"no mailbox by that name here\r\n", b"no mailbox by that name here\r\n" + second
    )
    notice = dsn.parse(dsn.load(raw))
    assert [(r.address, r.status, r.kind) for r in notice.recipients] == [
        (RECIPIENT, "5.1.1", "hard"), ("bob@example.org", "4.2.2", "soft"),
    ]  # fmt: skip


def test_a_base64_delivery_status_part_is_read_too():
    raw = dsn_mail("ses.eml", message_id=MESSAGE_ID, recipient=RECIPIENT, sender=SENDER)
    head, _, rest = raw.partition(b"Content-Type: message/delivery-status\r\n\r\n")
    block, _, tail = rest.partition(b"\r\n--RMvHG4MZK")
    encoded = base64.encodebytes(block).replace(b"\n", b"\r\n")
    raw = (head + b"Content-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64"
           b"\r\n\r\n" + encoded + b"\r\n--RMvHG4MZK" + tail)  # fmt: skip
    [recipient] = dsn.parse(dsn.load(raw)).recipients
    assert (recipient.address, recipient.status) == (RECIPIENT, "5.1.1")


@pytest.mark.parametrize(
    "text, status",
    [("550 5.1.1 <a@b>: user unknown", "5.1.1"), ("smtp; 452-4.2.2 full", "4.2.2"),
     ("550 user unknown", None), ("version 1.5.1.2 of x", None), ("2.0.0 Ok", "2.0.0"),
     (None, None)],
)  # fmt: skip
def test_enhanced_status_is_the_first_rfc_3463_code(text, status):
    assert enhanced_status(text) == status


@pytest.mark.parametrize(
    "status, dead",
    [("5.1.1", True), ("5.1.10", True), ("5.2.1", True), ("5.1.2", True), ("5.7.1", False),
     ("5.2.2", False), ("5.0.0", False), ("4.1.1", False), ("4.2.2", False), (None, False)],
)  # fmt: skip
def test_only_dead_address_statuses_suppress(status, dead):
    assert kills_address(status) is dead


def test_a_verp_token_is_unguessable_fits_a_local_part_and_comes_back_lower_case():
    tokens = {new_verp_token(T0) for _ in range(100)}
    assert len(tokens) == 100
    token = tokens.pop()
    address = verp_address(token, "bounces.example.net")
    assert len(address.partition("@")[0]) <= 64 and token == token.lower()
    text = f"To: <{address.upper().replace('BOUNCES.EXAMPLE.NET', 'Bounces.Example.net')}>"
    assert verp_tokens(text, "bounces.example.net") == [token]
    assert verp_tokens(address, "other.example.net") == []
