"""The outcome table: every phase against every kind of reply and failure, no network."""

from __future__ import annotations

import smtplib
import ssl

import pytest

from dispatcher.smtp import Outcome, Phase, _with_final_dot, all_refused, classify, kind_of

SENT, TEMP, PERM, UNSURE = Outcome.SENT, Outcome.TEMPORARY, Outcome.PERMANENT, Outcome.UNCERTAIN

# Failures that lose the connection or the reply, as smtplib and the socket layer raise them.
LOST = [
    TimeoutError("timed out"),
    ConnectionRefusedError(111, "refused"),
    smtplib.SMTPServerDisconnected("Connection unexpectedly closed"),
    ConnectionResetError(104, "reset"),
    BrokenPipeError(32, "broken pipe"),
    ssl.SSLError("bad record mac"),
    OSError(113, "no route to host"),
    smtplib.SMTPResponseException(-1, b"garbled"),
]
CODES = {"2xx": [250, 251], "4xx": [421, 450, 451, 452, 454], "5xx": [500, 550, 552, 553, 554]}

EXPECTED = {
    #              2xx    4xx   5xx   lost
    Phase.CONNECT: (TEMP, TEMP, TEMP, TEMP),  # account trouble: fix it, the queue drains
    Phase.MAIL: (TEMP, TEMP, PERM, TEMP),
    Phase.RCPT: (TEMP, TEMP, PERM, TEMP),
    Phase.DATA: (TEMP, TEMP, PERM, TEMP),
    Phase.BODY: (TEMP, TEMP, TEMP, TEMP),  # the final dot never left: nothing delivered
    Phase.REPLY: (SENT, TEMP, PERM, UNSURE),  # the message was out; its answer decides
}


def test_every_phase_has_a_row():
    assert set(EXPECTED) == set(Phase)


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("column", ["2xx", "4xx", "5xx"])
def test_reply_codes(phase, column):
    index = ["2xx", "4xx", "5xx"].index(column)
    for code in CODES[column]:
        if phase is not Phase.REPLY and column == "2xx":
            continue  # a 2xx mid-transaction is not an outcome; _refused() covers strays
        assert classify(phase, code) is EXPECTED[phase][index], (phase, code)
        error = smtplib.SMTPResponseException(code, b"text")
        assert classify(phase, error=error) is EXPECTED[phase][index], (phase, code)


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("error", LOST, ids=lambda e: type(e).__name__)
def test_lost_connections(phase, error):
    assert classify(phase, error=error) is EXPECTED[phase][3]


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("code", [530, 534, 535, 538])
def test_account_trouble_is_temporary_everywhere(phase, code):
    assert classify(phase, code) is TEMP  # "authentication required", "STARTTLS first" ...
    assert classify(phase, error=smtplib.SMTPAuthenticationError(code, b"no")) is TEMP


@pytest.mark.parametrize("code", [None, -1, 0, 100, 354, 600, 999])
def test_odd_codes_are_lost_replies(code):
    assert kind_of(code) == "lost"


def test_all_refused_retries_when_any_refusal_is_temporary():
    mixed = all_refused({"a@x.org": [550, "no"], "b@x.org": [451, "later"]})
    assert (mixed.outcome, mixed.code) == (TEMP, 451)
    final = all_refused({"a@x.org": [550, "no"], "b@x.org": [553, "bad"]})
    assert (final.outcome, final.code) == (PERM, 550)
    assert "a@x.org: 550 no" in final.detail


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b"a\r\n.b\r\n", b"a\r\n..b\r\n.\r\n"),  # dot-stuffing
        (b".\r\n", b"..\r\n.\r\n"),
        (b"no newline", b"no newline\r\n.\r\n"),
    ],
)
def test_final_dot_and_stuffing(data, wire):
    assert _with_final_dot(data) == wire
