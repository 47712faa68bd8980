"""The reporter's iteration against a real HTTP upstream, stepped with a fixed clock."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from common import operations, store
from reporter.body import REFERENCE_FIELDS
from reporter.client import SyncClient
from reporter.reporter import CHECKPOINT_EVERY, POLL_SECONDS, Reporter
from reporter.stream import BACKOFF_MAX, RUN_NOW_WINDOW, backoff_delay
from tests.support.db import record_outcome
from tests.support.factories import T0
from tests.support.hostile import DrippingSource
from tests.support.procs import wait_for
from tests.support.upstream import Upstream

PATIENT = (5.0, 10.0)  # connect / read timeouts: ample on a loaded CI machine
QUICK = (1.0, 0.3)  # ... and small enough for the hang test
DOCS = Path(__file__).resolve().parent.parent / "docs" / "reporting.md"


def sample(name: str, **labels) -> float:
    """A metric's current value in this process (0 before its first observation)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def reported_ts(conn, message_id: str):
    row = conn.execute("SELECT reported_ts FROM messages WHERE id = ?", (message_id,)).fetchone()
    return None if row is None else row["reported_ts"]


def drain(reporter: Reporter, now: float, turns: int = 50) -> int:
    """Run turns until the reporter has nothing more to do at once; returns turns taken."""
    for turn in range(1, turns + 1):
        if not reporter.run_once(now):
            return turn
    raise AssertionError("the reporter never went idle")


@pytest.fixture
def make_reporter(make_config, conn):
    """make_reporter(**config overrides) -> Reporter with short HTTP timeouts, closed after."""
    made = []

    def make(**overrides):
        config = make_config(**overrides)
        reporter = Reporter(
            config, conn, T0, make_client=lambda c: SyncClient.from_config(c, timeout=PATIENT)
        )
        made.append(reporter)
        return reporter

    yield make
    for reporter in made:
        reporter.close()


# -- what arrives ----------------------------------------------------------------------------
def test_outcomes_reach_upstream_once_each_oldest_first(upstream, make_reporter, conn):
    for n in (3, 1, 2):
        record_outcome(conn, f"m{n}", T0 - 10 + n)
    reporter = make_reporter(client_sync_url=upstream.url)
    before = [
        sample("asyncmail_report_items_total", tenant_id="default"),
        sample("asyncmail_report_lag_seconds_count"),
    ]

    assert reporter.run_once(T0) is True
    assert drain(reporter, T0 + 1) == 1
    drain(reporter, T0 + 2)

    after = [
        sample("asyncmail_report_items_total", tenant_id="default"),
        sample("asyncmail_report_lag_seconds_count"),
    ]
    assert [b - a for a, b in zip(before, after, strict=True)] == [3, 3]

    assert [item["id"] for item in upstream.items()] == ["m1", "m2", "m3"]
    assert len(upstream.requests) == 1
    assert all(reported_ts(conn, f"m{n}") == int(T0) for n in (1, 2, 3))
    assert store.reports.unreported_count(conn) == 0


def test_item_keeps_reference_fields_first_then_ours(upstream, make_reporter, conn):
    refused = {"bad@example.com": [550, "no such user"]}
    record_outcome(conn, "ok", T0 - 3, refused=refused)
    record_outcome(conn, "bad", T0 - 2, error="550 5.1.1 no such user", smtp_code=550)
    record_outcome(conn, "twice", T0 - 1, duplicate=True, smtp_code=None, attempts=2)
    reporter = make_reporter(client_sync_url=upstream.url)

    drain(reporter, T0)

    sent, failed, twice = upstream.items()
    assert list(sent)[:7] == list(REFERENCE_FIELDS)
    assert list(sent) == [*REFERENCE_FIELDS, "status", "attempts", "smtp_code", "refused"]
    assert sent == {
        "id": "ok",
        "account_id": None,
        "priority": 2,
        "sent_ts": int(T0 - 3),
        "error_ts": None,
        "error": None,
        "deferred_ts": None,
        "status": "sent",
        "attempts": 1,
        "smtp_code": 250,
        "refused": refused,
    }
    assert (failed["status"], failed["error_ts"], failed["sent_ts"]) == ("error", int(T0 - 2), None)
    assert failed["error"] == "550 5.1.1 no such user" and failed["smtp_code"] == 550
    assert twice["possible_duplicate"] is True and twice["attempts"] == 2
    assert "possible_duplicate" not in sent


@pytest.mark.parametrize("report_format", ["delivery_report", "reports"])
def test_report_format_names_the_key_the_items_travel_under(
    upstream, make_reporter, conn, report_format
):
    record_outcome(conn, "m1", T0 - 2)
    reporter = make_reporter(client_sync_url=upstream.url, report_format=report_format)

    drain(reporter, T0)
    reporter.run_once(T0 + 400)  # idle: the empty heartbeat report uses the same key

    first, idle = (json.loads(r.body) for r in upstream.answered())
    assert list(first) == [report_format] and list(idle) == [report_format]
    assert [item["id"] for item in first[report_format]] == ["m1"]
    assert list(first[report_format][0])[:7] == list(REFERENCE_FIELDS)
    assert idle[report_format] == [] and reported_ts(conn, "m1") == int(T0)


def test_batches_hold_at_most_report_batch_size(upstream, make_reporter, conn):
    for n in range(5):
        record_outcome(conn, f"m{n}", T0 - 10 + n)
    reporter = make_reporter(client_sync_url=upstream.url, report_batch_size=2)

    assert drain(reporter, T0) == 4  # 2 + 2 + 1, then a turn that finds nothing

    assert [len(r.items) for r in upstream.requests] == [2, 2, 1]
    assert [item["id"] for item in upstream.items()] == [f"m{n}" for n in range(5)]


def test_only_the_posted_rows_are_marked(upstream, make_reporter, conn, config):
    """An outcome recorded while the POST is in flight waits for the next request."""
    record_outcome(conn, "posted", T0 - 5)
    record_outcome(conn, "redone", T0 - 4)
    other = store.db.connect(config.database)

    def meanwhile(request):
        if not upstream.requests[1:]:  # during the first request only
            record_outcome(other, "late", T0 - 1)
            with store.db.write(other):  # "redone" resubmitted and failed again: a new outcome
                other.execute("UPDATE messages SET outcome_at = ? WHERE id = 'redone'", (T0,))

    upstream.on_request = meanwhile
    reporter = make_reporter(client_sync_url=upstream.url)
    try:
        assert reporter.run_once(T0) is True
        assert reported_ts(conn, "posted") == int(T0)
        assert reported_ts(conn, "late") is None
        assert reported_ts(conn, "redone") is None
        drain(reporter, T0 + 1)
    finally:
        other.close()
    assert [r.items[0]["id"] for r in upstream.requests] == ["posted", "late"]
    assert [i["id"] for i in upstream.requests[1].items] == ["late", "redone"]


def test_any_2xx_acknowledges_whatever_its_body(upstream, make_reporter, conn):
    upstream.answer(204)
    record_outcome(conn, "m", T0 - 1)
    drain(make_reporter(client_sync_url=upstream.url), T0)
    assert reported_ts(conn, "m") == int(T0)


def test_suspend_does_not_stop_reporting(upstream, make_reporter, conn):
    store.settings.set_active(conn, False)
    record_outcome(conn, "m", T0 - 1)
    drain(make_reporter(client_sync_url=upstream.url), T0)
    assert [i["id"] for i in upstream.items()] == ["m"]


# -- authentication and signing ----------------------------------------------------------------
def test_bearer_token_wins_over_basic_auth(make_reporter, conn):
    record_outcome(conn, "m", T0 - 1)
    with Upstream(token="tok-123") as upstream:
        reporter = make_reporter(
            client_sync_url=upstream.url,
            client_sync_token="tok-123",
            client_sync_user="u",
            client_sync_password="p",
        )
        drain(reporter, T0)
        assert upstream.requests[0].headers["Authorization"] == "Bearer tok-123"
        assert [i["id"] for i in upstream.items()] == ["m"]


def test_basic_auth(make_reporter, conn):
    record_outcome(conn, "m", T0 - 1)
    with Upstream(user="syncuser", password="syncpass") as upstream:
        drain(
            make_reporter(
                client_sync_url=upstream.url,
                client_sync_user="syncuser",
                client_sync_password="syncpass",
            ),
            T0,
        )
        assert upstream.requests[0].status == 200
        assert [i["id"] for i in upstream.items()] == ["m"]


def test_rejected_credentials_mark_nothing_and_never_reach_the_log(make_reporter, conn, caplog):
    record_outcome(conn, "m", T0 - 1)
    with Upstream(user="syncuser", password="right") as upstream:
        reporter = make_reporter(
            client_sync_url=upstream.url,
            client_sync_user="syncuser",
            client_sync_password="wrong-secret",
        )
        with caplog.at_level(logging.INFO):
            assert reporter.run_once(T0) is False
        assert upstream.requests[0].status == 401
    assert reported_ts(conn, "m") is None
    failures = [r.getMessage() for r in caplog.records if "report_failed" in r.getMessage()]
    assert len(failures) == 1 and "status=401" in failures[0]
    assert "wrong-secret" not in caplog.text


def _documented_verify():
    """The verification recipe exactly as docs/reporting.md prints it (five-line body)."""
    text = DOCS.read_text()
    block = re.search(r"verify-recipe.*?```python\n(.*?)```", text, re.S).group(1)
    assert len([line for line in block.split("def verify")[1].splitlines()[1:] if line]) == 5
    namespace: dict = {}
    exec(block, namespace)  # noqa: S102 - our own documentation, under test
    return namespace["verify"]


def test_signed_report_verifies_with_the_documented_recipe(upstream, make_reporter, conn):
    verify = _documented_verify()
    record_outcome(conn, "m", T0 - 1)
    reporter = make_reporter(client_sync_url=upstream.url, client_sync_signing_key="k3y")
    drain(reporter, time.time())

    request = upstream.requests[0]
    assert verify(b"k3y", request.headers, request.body)
    assert not verify(b"other", request.headers, request.body)
    assert not verify(b"k3y", request.headers, request.body.replace(b'"m"', b'"x"'))


def test_unsigned_without_a_key(upstream, make_reporter, conn):
    record_outcome(conn, "m", T0 - 1)
    drain(make_reporter(client_sync_url=upstream.url), T0)
    assert upstream.requests[0].headers["X-AsyncMail-Signature"] is None


# -- failures, backoff, recovery ----------------------------------------------------------------
def _fail_three_times(reporter: Reporter, now: float) -> list[float]:
    delays = []
    for _ in range(3):
        assert reporter.run_once(now) is False
        delays.append(reporter.stream().retry_at - now)
        assert reporter.run_once(now + delays[-1] / 2) is False  # still backing off: no request
        now = reporter.stream().retry_at
    return delays


@pytest.mark.parametrize("trouble", ["500", "down", "hang"])
def test_upstream_trouble_loses_nothing_and_backs_off(trouble, upstream, make_reporter, conn):
    for n in range(3):
        record_outcome(conn, f"m{n}", T0 - 10 + n)
    reporter = make_reporter(client_sync_url=upstream.url)
    reporter.stream().client.timeout = QUICK
    {"500": lambda: upstream.answer(500), "down": upstream.down, "hang": upstream.hang}[trouble]()

    failed = sample("asyncmail_report_batches_total", tenant_id="default", result="failed")

    delays = _fail_three_times(reporter, T0)

    assert (
        sample("asyncmail_report_batches_total", tenant_id="default", result="failed") - failed == 3
    )

    assert delays[0] < delays[1] < delays[2] <= BACKOFF_MAX
    assert store.reports.unreported_count(conn) == 3
    assert upstream.items() == []
    {"500": lambda: upstream.answer(200), "down": upstream.up, "hang": upstream.release}[trouble]()
    reporter.stream().client.timeout = PATIENT
    drain(reporter, reporter.stream().retry_at)
    assert store.reports.unreported_count(conn) == 0
    assert {i["id"] for i in upstream.items()} == {"m0", "m1", "m2"}
    assert (reporter.stream().failures, reporter.stream().retry_at) == (0, 0.0)


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    assert 1 <= backoff_delay(1) <= 2
    assert 2 <= backoff_delay(2) <= 3
    assert 8 <= backoff_delay(4) <= 9
    assert backoff_delay(50) == BACKOFF_MAX


def test_run_now_tries_at_once_despite_backoff(upstream, make_reporter, conn):
    record_outcome(conn, "m", T0 - 1)
    reporter = make_reporter(client_sync_url=upstream.url)
    upstream.answer(503)
    reporter.run_once(T0)
    upstream.answer(200)
    assert reporter.run_once(T0 + 0.1) is False  # backing off
    store.settings.put(conn, "run_now_at", repr(T0 + 0.2))
    reporter.run_once(T0 + 0.2)
    assert [i["id"] for i in upstream.items()] == ["m"]


def test_sleep_is_bounded_by_the_poll_the_checkpoint_and_the_retry(upstream, make_reporter, conn):
    reporter = make_reporter(client_sync_url=upstream.url, client_sync_idle_seconds=300)
    reporter.run_once(T0)
    assert reporter.idle_seconds(T0) == min(POLL_SECONDS, CHECKPOINT_EVERY)
    reporter.stream().retry_at = T0 + CHECKPOINT_EVERY / 2
    assert reporter.idle_seconds(T0) == CHECKPOINT_EVERY / 2


# -- idle reports, test_mode, no upstream --------------------------------------------------------
def test_idle_report_every_client_sync_idle_seconds(upstream, make_reporter, conn):
    reporter = make_reporter(client_sync_url=upstream.url, client_sync_idle_seconds=5)
    reporter.run_once(T0 + 4)
    assert upstream.requests == []
    reporter.run_once(T0 + 5)
    reporter.run_once(T0 + 6)
    assert [json.loads(r.body) for r in upstream.requests] == [{"delivery_report": []}]
    reporter.run_once(T0 + 5 + 5.5)
    assert len(upstream.requests) == 2


def test_idle_report_zero_disables_it(upstream, make_reporter, conn):
    reporter = make_reporter(client_sync_url=upstream.url, client_sync_idle_seconds=0)
    reporter.run_once(T0 + 10_000)
    assert upstream.requests == []


def test_test_mode_reports_only_after_run_now(upstream, make_reporter, conn):
    record_outcome(conn, "before", T0 - 1)
    reporter = make_reporter(
        client_sync_url=upstream.url, test_mode=True, client_sync_idle_seconds=1
    )
    drain(reporter, T0 + 100)
    assert upstream.requests == []

    store.settings.put(conn, "run_now_at", repr(T0 + 100))
    drain(reporter, T0 + 101)
    record_outcome(conn, "after", T0 + 102)  # the dispatch that run-now started
    drain(reporter, T0 + 103)
    record_outcome(conn, "too-late", T0 + 104)
    drain(reporter, T0 + 103 + RUN_NOW_WINDOW + 1)

    assert [i["id"] for i in upstream.items()] == ["before", "after"]
    assert reported_ts(conn, "too-late") is None


def test_run_now_posts_an_empty_report_when_nothing_waits(upstream, make_reporter, conn):
    reporter = make_reporter(client_sync_url=upstream.url, test_mode=True)
    store.settings.put(conn, "run_now_at", repr(T0))
    reporter.run_once(T0)
    reporter.run_once(T0 + 1)
    assert [json.loads(r.body) for r in upstream.requests] == [{"delivery_report": []}]


def test_without_client_sync_url_it_idles_says_so_once_and_still_purges(
    make_reporter, conn, caplog
):
    record_outcome(conn, "old", T0 - 9 * 86400)
    conn.execute("UPDATE messages SET reported_ts = ?", (int(T0 - 8 * 86400),))
    with caplog.at_level(logging.INFO):
        reporter = make_reporter()
        assert reporter.run_once(T0) is False
        assert reporter.run_once(T0 + 1) is False
    assert caplog.text.count("reporting_off") == 1
    assert store.messages.get(conn, "default", "old", T0) is None


# -- retention --------------------------------------------------------------------------------
def test_without_reports_finished_messages_are_purged_after_their_outcome(
    make_reporter, conn, make_config
):
    """No client_sync_url: no report will ever come, so retention counts from the outcome."""
    week = 7 * 86400
    record_outcome(conn, "old-sent", T0 - week - 100)
    record_outcome(conn, "old-failed", T0 - week - 100, error="550 no such user")
    record_outcome(conn, "recent", T0 - 100)
    store.messages.enqueue(  # waiting since long before the cutoff, not finished
        conn,
        "default",
        [store.messages.NewMessage("waiting", None, 2, {"id": "waiting"}, None, "<w@x.example>")],
        T0 - 9 * 86400,
    )
    make_reporter(delivery_report_retention_seconds=week).run_once(T0)
    assert {r["id"] for r in conn.execute("SELECT id FROM messages")} == {"recent", "waiting"}
    cleaned = operations.cleanup(conn, make_config(), T0, older_than=60)
    assert cleaned.removed == 1  # "recent", 100 s after its outcome
    assert {r["id"] for r in conn.execute("SELECT id FROM messages")} == {"waiting"}


def test_retention_purges_reported_rows_at_most_once_a_minute(upstream, make_reporter, conn):
    week = 7 * 86400
    record_outcome(conn, "old", T0 - week - 100)
    record_outcome(conn, "recent", T0 - 100)
    record_outcome(conn, "unreported", T0 - week - 50)
    conn.execute("UPDATE messages SET reported_ts = outcome_at WHERE id != 'unreported'")
    upstream.down()  # "unreported" must stay unreported, and so unpurged
    reporter = make_reporter(client_sync_url=upstream.url, delivery_report_retention_seconds=week)

    reporter.run_once(T0)
    remaining = {r["id"] for r in conn.execute("SELECT id FROM messages")}
    assert remaining == {"recent", "unreported"}

    conn.execute("UPDATE messages SET reported_ts = ? WHERE id = 'recent'", (T0 - week - 1,))
    reporter.run_once(T0 + 30)
    assert store.messages.get(conn, "default", "recent", T0) is not None
    reporter.run_once(T0 + 61)
    assert store.messages.get(conn, "default", "recent", T0) is None
    assert store.messages.get(conn, "default", "unreported", T0) is not None


# -- the deadline of a whole POST ---------------------------------------------------------------
def test_an_upstream_dripping_its_answer_is_cut_at_the_deadline():
    """One byte every 0.2 s of a 1000-byte answer would hold the POST 200 s: every read is
    quick, so only the deadline of the whole request ends it."""
    drip = DrippingSource(interval=0.2, length=1000)
    client = SyncClient(drip.url, deadline=1.0)
    try:
        answer = client.post([{"id": "m1"}], T0)
        assert (answer.ok, answer.status, answer.reason) == (
            False,
            None,
            "no whole answer within 1 s",
        )
        wait_for(lambda: drip.cut == 1, message="the upstream saw its connection cut")
    finally:
        client.close()
        drip.stop()


def test_a_kept_alive_connection_is_under_the_next_posts_deadline():
    with Upstream() as upstream:
        # reads may wait 600 s, past the upstream's own limit on hanging (it then answers 200):
        # only the deadline, cutting the reused connection, can fail this POST
        client = SyncClient(upstream.url, timeout=(5, 600), deadline=0.5)
        try:
            assert client.post([{"id": "m1"}], T0).ok  # the connection stays open, pooled
            upstream.hang()
            answer = client.post([{"id": "m2"}], T0)
            assert (answer.ok, answer.reason) == (False, "no whole answer within 0.5 s")
            assert len(upstream.requests) == 2  # the same upstream got both: the second was cut
        finally:
            upstream.release(200)
            client.close()
