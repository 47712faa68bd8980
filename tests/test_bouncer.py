"""The bouncer against a real IMAP server (Dovecot) and real sends (aiosmtpd): each shape of
notification matched and filed, suppression, VERP, the fallbacks without IDLE or MOVE, TLS,
a link cut mid-fetch or before the move, and the late ``bounced`` report upstream."""

from __future__ import annotations

import pytest

from bouncer import imap
from bouncer.bouncer import Bouncer
from bouncer.imap import Mailbox
from common import crypto, operations, store
from common.enums import Outcome, Status
from reporter.reporter import Reporter
from tests.support.db import attempts, row
from tests.support.dispatchers import send_ready
from tests.support.factories import T0, Clock, message
from tests.support.hostile import DrippingGreeter
from tests.support.imap import Cutter, dsn_mail
from tests.support.procs import wait_for
from tests.support.upstream import Upstream

RECIPIENT = "rcpt@example.com"
VERP_DOMAIN = "bounces.example.net"
FOLDERS = ("INBOX", "processed", "unmatched")


@pytest.fixture
def world(make_config, smtp_server, dovecot):
    """An SMTP sink, a Dovecot mailbox and a configuration joining them (suppression on)."""
    sink, mailbox = smtp_server(), dovecot()

    def configure(**overrides):
        settings = {"smtp_host": sink.host, "smtp_port": sink.port, "suppression": True,
                    "verp_domain": VERP_DOMAIN, **mailbox.settings(), **overrides}  # fmt: skip
        return make_config(**settings)

    return sink, mailbox, configure


def bouncer(conn, config, clock=None, **kwargs) -> Bouncer:
    return Bouncer(conn, config, clock=clock or Clock(), sleep=lambda s: None, **kwargs)


def bounce_of(conn, config, name: str, message_id: str, recipient: str = RECIPIENT) -> bytes:
    """The notification ``name`` about a sent message, addressed as the relay would."""
    stored = row(conn, message_id)
    sender = "sender@example.com"
    if stored["verp_token"]:
        sender = f"bounce+{stored['verp_token']}@{VERP_DOMAIN}"
    return dsn_mail(name, message_id=stored["message_id_header"], recipient=recipient,
                    sender=sender)  # fmt: skip


def handle_all(conn, config, mailbox_server) -> None:
    """One bouncer turn; the folder is empty after it."""
    b = bouncer(conn, config)
    assert b.run_once(T0)
    b.close()
    assert mailbox_server.messages("INBOX") == []


def bounced(world, conn, name: str, recipient: str = RECIPIENT, **overrides):
    """m1 sent, then the notification ``name`` about it delivered and handled; the config."""
    _, server, configure = world
    config = configure(**overrides)
    send_ready(conn, config, message("m1"))
    server.deliver(bounce_of(conn, config, name, "m1", recipient))
    handle_all(conn, config, server)
    return config


HARD = ["postfix.eml", "exim.eml", "gmail.eml", "gmail-plain.eml", "ses.eml",
        "ses-notification.eml"]  # fmt: skip


@pytest.mark.parametrize("name", HARD)
def test_a_hard_bounce_is_matched_recorded_suppresses_and_is_filed(world, conn, name):
    sink, server, _ = world
    bounced(world, conn, name)
    assert sink.received[0].sender.startswith("bounce+")  # VERP envelope sender
    [bounce] = store.bounces.of_message(conn, "default", "m1")
    assert (bounce["recipient"], bounce["kind"], bounce["action"], bounce["status"]) == (
        RECIPIENT, "hard", "failed", "5.1.1",
    )  # fmt: skip
    entry = store.suppressions.get(conn, "default", RECIPIENT)
    assert (entry["reason"], entry["status"], entry["count"]) == ("hard_bounce", "5.1.1", 1)
    assert server.counts(*FOLDERS) == {"INBOX": 0, "processed": 1, "unmatched": 0}


def test_the_next_message_to_a_hard_bounced_address_is_not_sent(world, conn):
    sink = world[0]
    config = bounced(world, conn, "postfix.eml")
    both = message("m2", to=[RECIPIENT, "other@example.com"])
    send_ready(conn, config, both, message("m3"))
    assert [r.recipients for r in sink.received[1:]] == [["other@example.com"]]
    m2, m3 = row(conn, "m2"), row(conn, "m3")
    assert m2["sent_ts"] and m2["refused"] == '{"rcpt@example.com": [null, "suppressed"]}'
    assert m3["error_ts"] and m3["error"] == "all recipients suppressed: rcpt@example.com"
    assert m3["refused"] == m2["refused"] and m3["attempts"] == 0
    assert [a["outcome"] for a in attempts(conn, "m3")] == [Outcome.SUPPRESSED]
    assert len(sink.received) == 2  # m3 opened no transaction: only m1 and m2 arrived


@pytest.mark.parametrize("name", ["postfix-soft.eml", "postfix-delayed.eml"])
def test_a_soft_bounce_is_recorded_and_suppresses_nothing(world, conn, name):
    sink = world[0]
    config = bounced(world, conn, name)
    [bounce] = store.bounces.of_message(conn, "default", "m1")
    assert bounce["kind"] == "soft" and bounce["status"].startswith("4.")
    assert store.suppressions.get(conn, "default", RECIPIENT) is None
    send_ready(conn, config, message("m2"))
    assert len(sink.received) == 2


def test_a_policy_bounce_is_hard_but_suppresses_nothing(world, conn):
    bounced(world, conn, "postfix-policy.eml")
    assert store.bounces.of_message(conn, "default", "m1")[0]["status"] == "5.7.1"
    assert store.suppressions.get(conn, "default", RECIPIENT) is None


@pytest.mark.parametrize("name", ["arf.eml", "ses-complaint.eml"])
def test_a_complaint_suppresses_with_its_reason(world, conn, name):
    bounced(world, conn, name)
    assert store.suppressions.get(conn, "default", RECIPIENT)["reason"] == "complaint"
    assert store.bounces.of_message(conn, "default", "m1") == []  # not a delivery failure


def test_a_notification_about_someone_else_suppresses_nobody(world, conn):
    bounced(world, conn, "postfix.eml", recipient="forward@else.org")
    assert store.bounces.of_message(conn, "default", "m1")[0]["recipient"] == "forward@else.org"
    assert store.suppressions.get(conn, "default", "forward@else.org") is None


@pytest.mark.parametrize("name", ["autoreply.eml", "vague.eml", "postfix.eml"])
def test_what_matches_nothing_goes_to_unmatched_untouched(world, conn, name):
    _, server, configure = world
    config = configure()
    send_ready(conn, config, message("m1"))
    raw = dsn_mail(name, message_id="<unknown@example.net>", recipient=RECIPIENT,
                   sender="someone@example.net")  # fmt: skip
    server.deliver(raw)
    handle_all(conn, config, server)
    assert server.messages("unmatched") == [raw]
    assert server.counts(*FOLDERS) == {"INBOX": 0, "processed": 0, "unmatched": 1}
    assert store.bounces.of_message(conn, "default", "m1") == []
    assert store.suppressions.counts(conn) == {"hard_bounce": 0, "complaint": 0, "manual": 0}


def test_verp_alone_matches_a_message_whose_message_id_the_relay_replaced(world, conn):
    """SES replaces the Message-ID: its bounce names the message by the VERP address only."""
    _, server, configure = world
    config = configure()
    send_ready(conn, config, message("m1"))
    stored = row(conn, "m1")
    verp = f"bounce+{stored['verp_token']}@{VERP_DOMAIN}"
    raw = dsn_mail("ses.eml", message_id="<ignored@x>", recipient=RECIPIENT, sender=verp)
    assert stored["message_id_header"].encode() not in raw
    server.deliver(raw)
    handle_all(conn, config, server)
    assert len(store.bounces.of_message(conn, "default", "m1")) == 1
    forged = dsn_mail("ses.eml", message_id="<x@y>", recipient=RECIPIENT,
                      sender=f"bounce+{'0' * 27}@{VERP_DOMAIN}")  # fmt: skip
    server.deliver(forged)
    handle_all(conn, config, server)
    assert server.counts("unmatched") == {"unmatched": 1}


def test_without_verp_the_message_id_matches(world, conn):
    sink, server, configure = world
    config = configure(verp_domain=None)
    send_ready(conn, config, message("m1"))
    assert sink.received[0].sender == "sender@example.com" and not row(conn, "m1")["verp_token"]
    server.deliver(bounce_of(conn, config, "postfix.eml", "m1"))
    handle_all(conn, config, server)
    assert len(store.bounces.of_message(conn, "default", "m1")) == 1


def test_a_message_with_its_own_return_path_keeps_it(world, conn):
    sink, _, configure = world
    send_ready(conn, configure(), message("m1", return_path="returns@example.com"))
    assert sink.received[0].sender == "returns@example.com"


def test_a_link_cut_mid_fetch_loses_nothing_and_processes_nothing_twice(world, conn):
    _, server, configure = world
    cutter = Cutter(server.port)
    try:
        config = configure(imap_port=cutter.port)
        send_ready(conn, config, message("m1"), message("m2"))
        for message_id in ("m1", "m2"):
            server.deliver(bounce_of(conn, config, "postfix.eml", message_id))
        clock = Clock()
        b = bouncer(conn, config, clock)
        cutter.cut_reply = b"BODY[]"  # the first mail's fetch dies half-way
        assert not b.run_once(clock())
        assert b.mailbox is None and store.bounces.of_message(conn, "default", "m1") == []
        cutter.cut_command = b"MOVE"  # next: recorded, then the link dies before the move
        clock.t = b.retry_at
        assert not b.run_once(clock())
        assert len(store.bounces.of_message(conn, "default", "m1")) == 1
        assert server.counts("INBOX") == {"INBOX": 2}
        clock.t = b.retry_at
        assert b.run_once(clock())
        b.close()
    finally:
        cutter.close()
    assert cutter.cuts == 2 and cutter.connections == 3
    assert [len(store.bounces.of_message(conn, "default", m)) for m in ("m1", "m2")] == [1, 1]
    assert store.suppressions.get(conn, "default", RECIPIENT)["count"] == 2  # once per notification
    assert server.counts(*FOLDERS) == {"INBOX": 0, "processed": 2, "unmatched": 0}


@pytest.mark.parametrize("capability", ["IMAP4rev1 LITERAL+ UIDPLUS", "IMAP4rev1"])
def test_without_idle_or_move_it_polls_and_copies(make_config, smtp_server, dovecot, conn,
                                                  capability):  # fmt: skip
    """No MOVE: COPY, flag \\Deleted, and with UIDPLUS expunge that UID; no IDLE: a search
    every imap_poll_seconds."""
    sink, server = smtp_server(), dovecot(capability=capability)
    config = make_config(smtp_host=sink.host, smtp_port=sink.port, imap_poll_seconds=30,
                         **server.settings())  # fmt: skip
    send_ready(conn, config, message("m1"))
    clock = Clock()
    b = bouncer(conn, config, clock)
    assert not b.run_once(clock()) and not b.mailbox.can_idle
    server.deliver(bounce_of(conn, config, "postfix.eml", "m1"))
    assert not b.run_once(clock())  # the next search is not due yet
    clock.t += 30
    assert b.run_once(clock())
    clock.t += 30
    assert not b.run_once(clock())  # a mail copied and flagged deleted is not seen again
    b.close()
    assert server.counts(*FOLDERS) == {"INBOX": 0, "processed": 1, "unmatched": 0}
    with server.client() as imap:
        imap.select("INBOX", readonly=True)
        left = imap.uid("SEARCH", None, "ALL")[1][0].split()
    assert len(left) == (0 if "UIDPLUS" in capability else 1)  # never expunged blindly
    assert len(store.bounces.of_message(conn, "default", "m1")) == 1


def test_idle_wakes_the_bouncer_when_a_notification_arrives(world, conn):
    _, server, configure = world
    config = configure()
    send_ready(conn, config, message("m1"))
    b = Bouncer(conn, config)
    assert not b.run_once(T0)  # connected, nothing waits
    assert b.mailbox.can_idle
    b.wait(0.01)  # IDLE begins
    assert not b.due
    server.deliver(bounce_of(conn, config, "postfix.eml", "m1"))
    b.wait(10)  # returns once the server announced the new mail
    assert b.due
    assert b.run_once(T0 + 1)
    b.close()
    assert len(store.bounces.of_message(conn, "default", "m1")) == 1


def test_the_late_bounced_report_reaches_the_upstream_once_after_the_sent_one(world, conn):
    _, server, configure = world
    with Upstream() as upstream:
        config = configure(client_sync_url=upstream.url)
        send_ready(conn, config, message("m1"))
        server.deliver(bounce_of(conn, config, "gmail.eml", "m1"))
        handle_all(conn, config, server)  # the bounce is known before the sent report left
        reporter = Reporter(config, conn, T0)
        for _ in range(4):
            reporter.run_once(T0 + 1)
        reporter.close()
        items = upstream.items()
    assert [(i["id"], i["status"]) for i in items] == [("m1", "sent"), ("m1", "bounced")]
    late = items[1]
    assert (late["recipient"], late["bounce_type"], late["status_code"]) == (
        RECIPIENT, "hard", "5.1.1",
    )  # fmt: skip
    assert "does not exist" in late["diagnostic"] and late["bounced_ts"] == int(T0)
    assert late["sent_ts"] == items[0]["sent_ts"]
    assert store.bounces.of_message(conn, "default", "m1")[0]["reported_ts"] is not None


def test_tls_and_starttls(make_config, dovecot, tls_cert, conn):
    server = dovecot(tls=True)
    for security, port in (("tls", server.tls_port), ("starttls", server.port)):
        config = make_config(**server.settings(imap_security=security, imap_port=port))
        mailbox = Mailbox.open(config, context=tls_cert.client_context())
        assert mailbox.waiting() == []
        mailbox.close()


def test_an_unreachable_mailbox_backs_off_and_says_why(make_config, conn, caplog):
    config = make_config(imap_host="127.0.0.1", imap_port=1, imap_user="u", imap_password="p",
                         imap_security="none")  # fmt: skip
    clock = Clock()
    b = bouncer(conn, config, clock)
    assert not b.run_once(clock()) and not b.run_once(clock())
    assert b.failures == 1 and b.retry_at == T0 + 1
    clock.t = b.retry_at
    b.run_once(clock())
    assert b.failures == 2 and b.retry_at == clock.t + 2
    assert "event=mailbox_failed" in caplog.text and "ConnectionRefusedError" in caplog.text


def test_a_dripping_mailbox_server_is_given_up_at_the_deadline(make_config, hostile, monkeypatch):
    monkeypatch.setattr(imap, "TIMEOUT", 1.0)
    server = hostile(DrippingGreeter, text=b"* OK " + b"." * 60 + b"\r\n", interval=0.1)
    config = make_config(imap_host=server.host, imap_port=server.port, imap_user="u",
                         imap_password="p", imap_security="none")  # fmt: skip
    with pytest.raises(imap.ERRORS, match="no whole answer within 1 s"):
        Mailbox.open(config)  # each byte comes well within a read's timeout: 6 s in all
    wait_for(lambda: server.cut == 1, message="the server saw the connection closed")


def test_a_mute_mailbox_server_is_given_up_at_the_deadline(make_config, hostile, monkeypatch):
    monkeypatch.setattr(imap, "TIMEOUT", 1.0)
    server = hostile(DrippingGreeter, text=b"* OK IMAP4rev1 ready\r\n", interval=0)
    config = make_config(imap_host=server.host, imap_port=server.port, imap_user="u",
                         imap_password="p", imap_security="none")  # fmt: skip
    with pytest.raises(imap.ERRORS, match="no whole answer within 1 s"):  # no CAPABILITY
        Mailbox.open(config)


def test_the_message_detail_lists_its_bounces(world, conn):
    """GET /messages/{id} and asyncmail messages show: the status stays what the send made it."""
    bounced(world, conn, "exim.eml")
    detail = store.messages.get(conn, "default", "m1", T0)
    assert detail["status"] == Status.SENT and detail["bounces"][0]["status"] == "5.1.1"


def test_a_sealed_password_is_unsealed_with_the_key_and_refused_without(world, conn, caplog):
    _, server, configure = world
    sealed = crypto.seal(server.settings()["imap_password"], "k" * 32)
    assert bounced(world, conn, "postfix.eml", imap_password=sealed, secret_key="k" * 32)
    b = bouncer(conn, configure(imap_password=sealed, secret_key="another key"))
    assert not b.run_once(T0) and b.failures == 1
    assert "SecretError" in caplog.text and sealed not in caplog.text


def test_a_configured_bouncer_that_does_not_beat_makes_the_stack_unhealthy():
    beats = [{"process": p, "kind": p.split("-")[0], "age_seconds": 1.0, "stale": False}
             for p in ("dispatcher-00", "reporter")]  # fmt: skip
    assert operations.health(beats, supervisor_runs=True) == []
    [problem] = operations.health(beats, supervisor_runs=True, bouncer=True)
    assert "No live bouncer" in problem
