"""Dispatcher.run_once against real aiosmtpd servers, a real database and a fixed clock."""

from __future__ import annotations

import json
import logging

import pytest

from common import crypto, store, wakeup
from tests.support.db import attempts, enqueue, row
from tests.support.dispatchers import make_dispatcher
from tests.support.factories import T0, Clock, message
from tests.support.smtp import Behavior


@pytest.fixture
def account(conn, smtp_server):
    """A plain server and an account 'acct' pointing at it."""
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    return peer


@pytest.mark.parametrize("kind", ["plain", "starttls", "tls"])
def test_sends_over_each_transport_with_auth(conn, config, smtp_server, tls_cert, kind):
    peer = smtp_server(kind, auth=("mailer", "s3cret"), behavior=Behavior(pipelining=True))
    store.accounts.upsert(conn, "default", peer.account(user="mailer", password="s3cret"), int(T0))
    enqueue(conn, config, message("m1", "acct"), message("m2", "acct"))
    dispatcher = make_dispatcher(conn, config, tls_cert)
    assert dispatcher.run_once(T0) is True
    assert peer.subjects() == ["m1", "m2"]
    assert len({r.peer_port for r in peer.received}) == 1  # one pooled connection
    sent = row(conn, "m1")
    assert (sent["sent_ts"], sent["outcome_at"], sent["attempts"]) == (int(T0), T0, 1)
    assert sent["lease_owner"] is None and sent["smtp_code"] == 250
    [attempt] = attempts(conn, "m1")
    assert (attempt["outcome"], attempt["smtp_code"], attempt["ts"]) == ("sent", 250, T0)
    assert store.messages.get(conn, "default", "m1", T0)["status"] == "sent"
    assert dispatcher.run_once(T0) is False  # nothing left
    dispatcher.close()


def test_encrypted_password_is_unsealed(make_config, smtp_server, tls_cert):
    config = make_config(secret_key="k" * 32)
    from common import store

    conn = store.db.connect(config.database)
    peer = smtp_server("tls", auth=("mailer", "s3cret"))
    sealed = crypto.seal("s3cret", config.secret_key)
    store.accounts.upsert(conn, "default", peer.account(user="mailer", password=sealed), int(T0))
    enqueue(conn, config, message("m1", "acct"))
    make_dispatcher(conn, config, tls_cert).run_once(T0)
    assert row(conn, "m1")["sent_ts"] is not None
    conn.close()


def test_wrong_password_is_temporary(conn, config, smtp_server):
    peer = smtp_server("plain", auth=("mailer", "s3cret"))
    store.accounts.upsert(conn, "default", peer.account(user="mailer", password="wrong"), int(T0))
    enqueue(conn, config, message("m1", "acct"))
    make_dispatcher(conn, config).run_once(T0)
    failed = row(conn, "m1")
    assert failed["sent_ts"] is None and failed["error_ts"] is None
    assert 54 <= failed["ready_at"] - T0 <= 66  # first retry delay 60 s ± 10 %
    assert failed["deferred_ts"] == int(failed["ready_at"]) + 1
    assert "535" in failed["error"] and failed["attempts"] == 1
    assert attempts(conn, "m1")[0]["outcome"] == "temporary"
    assert peer.received == []


def test_default_account_from_smtp_section(make_config, smtp_server):
    peer = smtp_server()
    config = make_config(smtp_host=peer.host, smtp_port=peer.port)
    from common import store

    conn = store.db.connect(config.database)
    enqueue(conn, config, message("m1"))
    make_dispatcher(conn, config).run_once(T0)
    assert len(peer.received) == 1 and row(conn, "m1")["sent_ts"] == int(T0)
    assert attempts(conn, "m1")[0]["account_id"] is None
    conn.close()


def test_priority_then_age_within_one_claim(conn, config, account):
    enqueue(conn, config, message("low", "acct", priority="low"), now=T0 - 30)
    enqueue(conn, config, message("old", "acct", priority=2), now=T0 - 20)
    enqueue(conn, config, message("new", "acct", priority=2), now=T0 - 10)
    enqueue(conn, config, message("now", "acct", priority="immediate"), now=T0 - 5)
    make_dispatcher(conn, config).run_once(T0)
    assert account.subjects() == ["now", "old", "new", "low"]


def test_batch_size_per_account_is_fair(conn, make_config, smtp_server):
    config = make_config(batch_size_per_account=2)
    busy, quiet = smtp_server(), smtp_server()
    store.accounts.upsert(conn, "default", busy.account("busy"), int(T0))
    store.accounts.upsert(conn, "default", quiet.account("quiet", batch_size=1), int(T0))
    enqueue(conn, config, *[message(f"b{i}", "busy") for i in range(5)])
    enqueue(conn, config, *[message(f"q{i}", "quiet") for i in range(3)])
    dispatcher = make_dispatcher(conn, config)
    dispatcher.run_once(T0)
    assert (len(busy.received), len(quiet.received)) == (2, 1)
    dispatcher.run_once(T0)
    assert (len(busy.received), len(quiet.received)) == (4, 2)


def test_claims_never_overlap_and_expired_leases_are_taken(conn, config, account):
    from common import store

    enqueue(conn, config, *[message(f"m{i}", "acct") for i in range(4)])
    other = store.db.connect(config.database)
    first = store.claims.claim(conn, "a", T0, 120, 50, False)
    second = store.claims.claim(other, "b", T0, 120, 50, False)
    assert len(first.messages) == 4 and second.messages == []
    assert store.messages.get(conn, "default", "m0", T0)["status"] == "sending"
    taken = store.claims.claim(other, "b", T0 + 121, 120, 50, False)  # "a" died: its lease ran out
    assert sorted(m["id"] for m in taken.messages) == ["m0", "m1", "m2", "m3"]
    other.close()


A, X, Y = "rcpt@example.com", "x@example.com", "y@example.com"


@pytest.mark.parametrize(
    ("to", "replies", "state", "refused"),
    [
        ([A, X], {X: "451 4.7.1 later"}, "sent", {X: [451, "4.7.1 later"]}),
        ([A, X, Y], {X: "550 5.1.1 unknown", Y: "451 later"}, "sent", None),
        ([A, X], {A: "550 5.1.1 unknown", X: "550 no"}, "error", None),
        ([A, X], {A: "451 later", X: "550 no"}, "retry", None),
    ],
)
@pytest.mark.parametrize("pipelining", [False, True])
def test_recipient_refusals(conn, config, smtp_server, to, replies, state, refused, pipelining):
    peer = smtp_server(behavior=Behavior(rcpt=replies, pipelining=pipelining))
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    enqueue(conn, config, message("m1", "acct", to=to))
    make_dispatcher(conn, config).run_once(T0)
    got = row(conn, "m1")
    if state == "sent":
        assert got["sent_ts"] == int(T0)
        stored = json.loads(got["refused"])
        assert set(stored) == set(replies) and (refused is None or stored == refused)
        accepted = [a for a in to if a not in replies]
        assert peer.received[0].recipients == accepted
    elif state == "error":
        assert got["error_ts"] == int(T0) and "all recipients refused" in got["error"]
    else:
        assert got["error_ts"] is None and got["ready_at"] > T0 + 50


@pytest.mark.parametrize(("reply", "final"), [("451 4.3.0 busy", False), ("554 5.7.1 spam", True)])
@pytest.mark.parametrize("pipelining", [False, True])
def test_end_of_data_reply(conn, config, smtp_server, reply, final, pipelining):
    peer = smtp_server(behavior=Behavior(data_reply=reply, pipelining=pipelining))
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    enqueue(conn, config, message("m1", "acct"), message("m2", "acct"))
    make_dispatcher(conn, config).run_once(T0)
    for message_id in ("m1", "m2"):  # the connection is reset and reused after each
        got = row(conn, message_id)
        assert (got["error_ts"] is not None) is final
        assert got["smtp_code"] == int(reply[:3]) and got["possible_duplicate"] == 0
    assert len({r.peer_port for r in peer.handler.attempted}) == 1


def test_drop_after_data_is_uncertain(conn, config, smtp_server):
    peer = smtp_server(behavior=Behavior(drop_after_data=True))
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    enqueue(conn, config, message("m1", "acct"))
    make_dispatcher(conn, config).run_once(T0)
    got = row(conn, "m1")
    assert got["possible_duplicate"] == 1 and got["sent_ts"] is None
    assert got["ready_at"] - T0 >= 300  # no sooner than the second retry delay
    assert attempts(conn, "m1")[0]["outcome"] == "uncertain"
    assert store.messages.get(conn, "default", "m1", T0)["possible_duplicate"] is True


def test_silence_times_out_as_temporary(conn, config, silent_server):
    store.accounts.upsert(conn, "default", silent_server.account("acct", timeout=0.3), int(T0))
    enqueue(conn, config, message("m1", "acct"))
    make_dispatcher(conn, config).run_once(T0)
    got = row(conn, "m1")
    assert got["error_ts"] is None and got["possible_duplicate"] == 0
    assert "timed out" in got["error"].lower() or "timeout" in got["error"].lower()


def test_no_reply_to_data_is_uncertain(conn, config, smtp_server):
    peer = smtp_server(behavior=Behavior(data_delay=5))
    store.accounts.upsert(conn, "default", peer.account(timeout=0.3), int(T0))
    enqueue(conn, config, message("m1", "acct"))
    make_dispatcher(conn, config).run_once(T0)
    assert attempts(conn, "m1")[0]["outcome"] == "uncertain"
    assert row(conn, "m1")["possible_duplicate"] == 1


def test_retries_until_max_then_error(conn, make_config, smtp_server):
    config = make_config(max_retries=2, retry_delays=(10, 20))
    peer = smtp_server(behavior=Behavior(data_reply="451 later"))
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    enqueue(conn, config, message("m1", "acct"))
    clock = Clock()
    dispatcher = make_dispatcher(conn, config, clock=clock)
    for expected_delay in (10, 20):
        dispatcher.run_once(clock.t)
        assert abs(row(conn, "m1")["ready_at"] - clock.t - expected_delay) <= expected_delay * 0.1
        assert dispatcher.run_once(clock.t) is False  # not before its time
        clock.t = row(conn, "m1")["ready_at"]
    dispatcher.run_once(clock.t)
    got = row(conn, "m1")
    assert got["error_ts"] is not None and "gave up after 3 attempts" in got["error"]
    assert [a["outcome"] for a in attempts(conn, "m1")] == ["temporary"] * 3


def test_rate_limit_defers_without_counting_a_retry(conn, config, smtp_server):
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account(limit_per_minute=1), int(T0))
    enqueue(conn, config, message("m1", "acct"), message("m2", "acct"), message("m3", "acct"))
    dispatcher = make_dispatcher(conn, config)
    dispatcher.run_once(T0)
    assert len(peer.received) == 1
    held = row(conn, "m2")
    assert held["attempts"] == 0 and held["lease_owner"] is None
    assert held["ready_at"] == T0 + 60 and held["deferred_ts"] == int(T0 + 60)
    assert [a["outcome"] for a in attempts(conn, "m2")] == ["deferred"]
    skipped = row(conn, "m3")  # released cheaply, without an attempt row
    assert skipped["ready_at"] == T0 + 60 and attempts(conn, "m3") == []
    assert dispatcher.run_once(T0 + 1) is False


def test_rate_limit_reject(conn, config, smtp_server):
    peer = smtp_server()
    account = peer.account(limit_per_minute=1, limit_behavior="reject")
    store.accounts.upsert(conn, "default", account, int(T0))
    enqueue(conn, config, message("m1", "acct"), message("m2", "acct"))
    make_dispatcher(conn, config).run_once(T0)
    got = row(conn, "m2")
    assert got["error"] == "rate limit exceeded" and got["error_ts"] == int(T0)
    assert attempts(conn, "m2")[0]["outcome"] == "rejected"


def test_account_limit_change_applies_on_next_claim(conn, config, smtp_server):
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account(limit_per_minute=1), int(T0))
    enqueue(conn, config, message("m1", "acct"), message("m2", "acct"))
    dispatcher = make_dispatcher(conn, config)
    dispatcher.run_once(T0)
    assert len(peer.received) == 1
    store.accounts.upsert(conn, "default", peer.account(limit_per_minute=10), int(T0))
    store.accounts.upsert(conn, "default", peer.account(limit_per_minute=None), int(T0))
    conn.execute("UPDATE messages SET ready_at = ?, deferred_ts = NULL", (T0,))
    dispatcher.run_once(T0 + 1)
    assert len(peer.received) == 2


def test_suspend_and_test_mode(conn, make_config, account):
    config = make_config(test_mode=True)
    enqueue(conn, config, message("m1", "acct"))
    dispatcher = make_dispatcher(conn, config)
    assert dispatcher.run_once(T0) is False  # test mode: waits for run-now
    store.settings.set_active(conn, False)
    store.settings.put(conn, "run_now_at", str(T0))
    assert dispatcher.run_once(T0) is False  # suspended wins
    store.settings.set_active(conn, True)
    assert dispatcher.run_once(T0) is True
    enqueue(conn, config, message("m2", "acct"))
    assert dispatcher.run_once(T0) is True  # still draining after that run-now
    assert dispatcher.run_once(T0) is False  # dry: waits for the next run-now
    enqueue(conn, config, message("m3", "acct"))
    assert dispatcher.run_once(T0) is False
    assert len(account.received) == 2


def test_poison_message_does_not_block_the_rest(conn, config, account, caplog):
    enqueue(conn, config, message("m1", "acct"), message("m2", "acct"))
    conn.execute("UPDATE messages SET payload = '{\"id\": 1}' WHERE id = 'm1'")
    with caplog.at_level(logging.ERROR):
        make_dispatcher(conn, config).run_once(T0)
    assert row(conn, "m2")["sent_ts"] == int(T0)
    bad = row(conn, "m1")
    assert bad["sent_ts"] is None and "internal error" in bad["error"]
    assert len(caplog.records) == 1


def test_stop_releases_the_rest_of_the_claim(conn, config, account):
    enqueue(conn, config, *[message(f"m{i}", "acct") for i in range(4)])
    sent = []
    dispatcher = make_dispatcher(conn, config, should_stop=lambda: len(account.received) >= 1)
    dispatcher.run_once(T0)
    sent = [m for m in ("m0", "m1", "m2", "m3") if row(conn, m)["sent_ts"]]
    assert sent == ["m0"]
    for message_id in ("m1", "m2", "m3"):
        released = row(conn, message_id)
        assert released["lease_owner"] is None and released["ready_at"] == T0
        assert store.messages.get(conn, "default", message_id, T0)["status"] == "queued"


def test_silent_reconnect_after_server_restart(conn, config, smtp_server):
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    enqueue(conn, config, message("m1", "acct"))
    dispatcher = make_dispatcher(conn, config)
    dispatcher.run_once(T0)
    peer.stop()  # drops the pooled connection
    again = smtp_server(port=peer.port)
    enqueue(conn, config, message("m2", "acct"))
    dispatcher.run_once(T0)
    assert row(conn, "m2")["sent_ts"] == int(T0) and len(again.received) == 1
    assert [a["outcome"] for a in attempts(conn, "m2")] == ["sent"]


@pytest.mark.parametrize("pipelining", [False, True])
def test_reconnects_once_when_a_reused_connection_says_421(conn, config, smtp_server, pipelining):
    behavior = Behavior(messages_per_connection=2, pipelining=pipelining)
    peer = smtp_server(behavior=behavior)
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    enqueue(conn, config, *[message(f"m{i}", "acct") for i in range(5)])
    make_dispatcher(conn, config).run_once(T0)
    assert len(peer.received) == 5
    assert len({r.peer_port for r in peer.received}) == 3  # 2 + 2 + 1
    assert {a["outcome"] for a in conn.execute("SELECT outcome FROM attempts")} == {"sent"}


def test_connection_ttl_and_idle_noop(conn, config, smtp_server):
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account(ttl=60), int(T0))
    clock = Clock()
    dispatcher = make_dispatcher(conn, config, clock=clock)
    for i, step in enumerate((0, 10, 70)):  # idle 10 s: NOOP, reuse; past ttl: reconnect
        clock.t += step
        enqueue(conn, config, message(f"m{i}", "acct"), now=clock.t)
        dispatcher.run_once(clock.t)
    ports = [r.peer_port for r in peer.received]
    assert ports[0] == ports[1] != ports[2]


def test_reporter_is_woken_after_outcomes(conn, config, account):
    waiter = wakeup.Waiter(config.run_dir, wakeup.REPORTER, "test")
    try:
        enqueue(conn, config, message("m1", "acct"))
        make_dispatcher(conn, config).run_once(T0)
        assert waiter.wait(0.5) is True
    finally:
        waiter.close()


def test_idle_seconds_until_the_next_due_row(conn, make_config, account):
    config = make_config(send_interval_seconds=5)
    enqueue(conn, config, message("m1", "acct", deferred_ts=int(T0) + 2))
    clock = Clock()
    dispatcher = make_dispatcher(conn, config, clock=clock)
    assert dispatcher.run_once(T0) is False
    assert dispatcher.idle_seconds() == 2
    clock.t += 3
    assert dispatcher.run_once(clock.t) is True


def test_delivery_activity_logs_one_line_without_password(make_config, smtp_server, caplog):
    from common import store

    config = make_config(delivery_activity=True)
    conn = store.db.connect(config.database)
    peer = smtp_server("plain", auth=("mailer", "pw-XYZZY"))
    store.accounts.upsert(
        conn, "default", peer.account(user="mailer", password="pw-XYZZY"), int(T0)
    )
    enqueue(conn, config, message("m1", "acct"))
    with caplog.at_level(logging.INFO, logger="dispatcher"):
        make_dispatcher(conn, config).run_once(T0)
    lines = [r.getMessage() for r in caplog.records if "event=attempt" in r.getMessage()]
    assert len(lines) == 1 and "outcome=sent" in lines[0] and "id=m1" in lines[0]
    assert "XYZZY" not in caplog.text
    conn.close()


@pytest.mark.parametrize("pipelining", [False, True])
def test_server_receives_exactly_the_built_bytes(conn, config, smtp_server, pipelining):
    from common.models import Message
    from dispatcher import mime

    peer = smtp_server(behavior=Behavior(pipelining=pipelining))
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    item = message("m1", "acct", cc="c@example.com", bcc="hidden@example.com",
                   return_path="b@example.com",
                   body=".leading dot\r\n..two\n.\nend without newline")  # fmt: skip
    enqueue(conn, config, item)
    make_dispatcher(conn, config).run_once(T0)
    header = store.messages.get(conn, "default", "m1", T0)["message_id_header"]
    built = mime.build(Message.model_validate(item), [], T0, header)
    [got] = peer.received
    assert got.data == built.data  # dot-stuffing undone by the server, nothing else changed
    assert (got.sender, got.recipients) == ("b@example.com", built.recipients)
    assert built.recipients == ["rcpt@example.com", "c@example.com", "hidden@example.com"]


def test_reconfigure_switches_the_default_account(make_config, smtp_server):
    from common import store

    first, second = smtp_server(), smtp_server()
    config = make_config(smtp_host=first.host, smtp_port=first.port)
    conn = store.db.connect(config.database)
    dispatcher = make_dispatcher(conn, config)
    enqueue(conn, config, message("m1"))
    dispatcher.run_once(T0)
    dispatcher.reconfigure(make_config(smtp_host=second.host, smtp_port=second.port))
    enqueue(conn, config, message("m2"))
    dispatcher.run_once(T0)
    assert (len(first.received), len(second.received)) == (1, 1)
    conn.close()


def test_unusable_ledger_means_no_unmetered_send(conn, config, smtp_server, caplog):
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account(limit_per_second=5), int(T0))
    config.ratelimit_dir.parent.mkdir(parents=True, exist_ok=True)
    config.ratelimit_dir.write_text("not a directory")
    enqueue(conn, config, message("m1", "acct"))
    with caplog.at_level(logging.ERROR):
        make_dispatcher(conn, config).run_once(T0)
    assert peer.handler.attempted == []
    got = row(conn, "m1")
    assert got["error_ts"] is None and "rate-limit ledger" in got["error"]
    assert "event=ledger_failed" in caplog.text


def test_retry_delays_jitter_and_repeat(conn, make_config):
    dispatcher = make_dispatcher(conn, make_config(retry_delays=(10, 20, 30)))
    for attempts_done, base in [(1, 10), (2, 20), (3, 30), (9, 30)]:
        samples = [dispatcher.retry_delay(attempts_done) for _ in range(200)]
        assert base * 0.9 <= min(samples) < max(samples) <= base * 1.1
    assert min(dispatcher.retry_delay(1, uncertain=True) for _ in range(200)) >= 20


def test_a_clean_run_flags_nothing(conn, make_config, smtp_server):
    config = make_config(batch_size_per_account=30)
    peer = smtp_server(behavior=Behavior(rcpt={"x@example.com": "550 no"}))
    store.accounts.upsert(conn, "default", peer.account(limit_per_minute=20), int(T0))
    to = ["x@example.com" if i % 7 == 0 else "r@example.com" for i in range(30)]
    enqueue(conn, config, *[message(f"m{i}", "acct", to=to[i]) for i in range(30)])
    make_dispatcher(conn, config).run_once(T0)
    rows = conn.execute("SELECT maybe_sent, possible_duplicate FROM messages").fetchall()
    assert {(r["maybe_sent"], r["possible_duplicate"]) for r in rows} == {(0, 0)}
    refused = conn.execute("SELECT count(*) AS n FROM messages WHERE error_ts IS NOT NULL")
    assert len(peer.received) + refused.fetchone()["n"] == 20  # the 20 slots of the minute


def test_missing_starttls_is_account_trouble_not_a_bounce(conn, config, smtp_server):
    peer = smtp_server("starttls")  # requires STARTTLS before MAIL
    store.accounts.upsert(conn, "default", {**peer.account(), "starttls": False}, int(T0))
    enqueue(conn, config, message("m1", "acct"))
    make_dispatcher(conn, config).run_once(T0)
    got = row(conn, "m1")
    assert got["error_ts"] is None and got["smtp_code"] == 530 and got["ready_at"] > T0
