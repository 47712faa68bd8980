"""Operator chores, in process on a real database: retry, run-now --flush, usage per limit
window, status as a health check, backup and restore (CLI and API)."""

from __future__ import annotations

import json
import math
import os
import socket
import stat
import subprocess
import time

import pytest

from common import intake, operations, store
from common.enums import Next, Outcome
from common.models import Account
from common.ratelimit import Ledger, Limits
from common.store.claims import Attempt, Transition
from tests.support.factories import account, message
from tests.support.stack import ASYNCMAIL
from web.app import create_app

TOKEN = "chores-token"
AUTH = {"X-API-Token": TOKEN}


@pytest.fixture
def cfg(make_config):
    return make_config(api_token=TOKEN, smtp_host="127.0.0.1", smtp_port=2525)


@pytest.fixture
def client(cfg):
    return create_app(cfg).test_client()


def enqueue(conn, cfg, *items, now=None):
    result = intake.accept_batch(conn, cfg, "default", list(items), now or time.time())
    assert len(result.queued) == len(items), result.rejected


def outcome(conn, message_id, state: Next, now: float, ready_at=None, result=Outcome.TEMPORARY):
    """Claim the message and record ``state`` for it, as a dispatcher would."""
    claimed_at = max(now, time.time()) + 1  # whenever it was queued, it is ready by then
    claim = store.claims.claim(conn, "d-00", claimed_at, 60, 100, True)
    assert message_id in {row["id"] for row in claim.messages}
    others = [store.claims.key(row) for row in claim.messages if row["id"] != message_id]
    store.claims.release(conn, others, "d-00", claimed_at)
    account_id = next(r["account_id"] for r in claim.messages if r["id"] == message_id)
    attempt = Attempt(message_id, account_id, now, result, 451, "4.3.0 try later", 0.01)
    error = "4.3.0 try later" if state is not Next.SENT else None
    store.claims.record(
        conn, [Transition(attempt, state, now, ready_at, error=error)], "d-00", "d-00"
    )


def row(conn, message_id) -> dict:
    return store.messages.get(conn, "default", message_id, time.time())


# -- retry -------------------------------------------------------------------------------------
def test_retry_requeues_errors_and_they_owe_a_fresh_report(conn, cfg):
    now = time.time()
    enqueue(conn, cfg, message("failed"), message("ok"))
    outcome(conn, "failed", Next.ERROR, now)
    outcome(conn, "ok", Next.SENT, now, result=Outcome.SENT)
    store.reports.mark_reported(
        conn, "default", store.reports.fetch_unreported(conn, "default", 10), int(now)
    )
    assert store.reports.unreported_count(conn) == 0

    done = operations.retry(conn, cfg, "default", now + 1, status="error")
    assert (done.requeued, done.attempts) == (1, "kept")
    failed = row(conn, "failed")
    assert failed["status"] == "queued" and failed["attempts"] == 1
    assert failed["reported_ts"] is None and failed["error_ts"] is None
    assert failed["error"] == "4.3.0 try later"  # the last reply stays until the next outcome
    assert store.reports.unreported_count(conn) == 0  # no outcome yet: nothing owed meanwhile
    # the sent one is purged; not the requeued one
    assert store.reports.purge_finished(conn, now + 10**6) == 1

    outcome(conn, "failed", Next.SENT, now + 2, result=Outcome.SENT)
    owed = store.reports.fetch_unreported(conn, "default", 10)
    assert [(r["id"], r["sent_ts"] is not None) for r in owed] == [("failed", True)]


def test_the_purge_keeps_a_message_while_a_bounce_of_it_is_owed(conn, cfg):
    """A bounce arriving near the end of the retention is still reported, then purged."""
    now = time.time()
    enqueue(conn, cfg, message("bounced"), message("quiet"))
    for message_id in ("bounced", "quiet"):
        outcome(conn, message_id, Next.SENT, now, result=Outcome.SENT)
    owed = store.reports.fetch_unreported(conn, "default", 10)
    store.reports.mark_reported(conn, "default", owed, int(now))
    event = store.bounces.Event("bounced", "a@example.org", "hard", "failed", "5.1.1", "gone")
    store.bounces.record_mail(conn, "k1", "processed", "rfc3464", [event], [], now, "default")

    assert store.reports.purge_finished(conn, now + 10**6) == 1  # "quiet" only
    assert row(conn, "bounced") is not None
    late = store.bounces.fetch_unreported(conn, "default", 10)
    store.bounces.mark_reported(conn, late, int(now))
    assert store.reports.purge_finished(conn, now + 10**6) == 1


def test_retry_resets_attempts_when_asked(conn, cfg):
    now = time.time()
    enqueue(conn, cfg, message("m"))
    outcome(conn, "m", Next.ERROR, now)
    done = operations.retry(conn, cfg, "default", now, ids=["m"], reset_attempts=True)
    assert (done.requeued, done.attempts) == (1, "reset")
    assert row(conn, "m")["attempts"] == 0


def test_retry_deferred_takes_retries_not_the_clients_schedule(conn, cfg):
    now = time.time()
    enqueue(conn, cfg, message("waiting"), message("scheduled", deferred_ts=int(now) + 3600))
    outcome(conn, "waiting", Next.RETRY, now, ready_at=now + 3600)
    assert row(conn, "waiting")["status"] == "deferred"

    done = operations.retry(conn, cfg, "default", now, status="deferred")
    assert done.requeued == 1
    assert row(conn, "waiting")["status"] == "queued"
    assert row(conn, "scheduled")["status"] == "deferred"


def test_retry_by_ids_says_what_it_did_not_take(conn, cfg):
    now = time.time()
    enqueue(conn, cfg, message("failed"), message("sent"), message("queued"))
    outcome(conn, "failed", Next.ERROR, now)
    outcome(conn, "sent", Next.SENT, now, result=Outcome.SENT)
    done = operations.retry(
        conn, cfg, "default", now, ids=["failed", "sent", "queued", "nope", "failed"]
    )
    assert done.requeued == 1
    assert done.not_found == ["nope"]
    assert sorted(done.not_retryable) == ["queued", "sent"]


def test_retry_by_account(conn, cfg):
    now = time.time()
    operations.save_account(conn, cfg, "default", _account("acme"), now)
    enqueue(conn, cfg, message("a1", "acme"), message("d1"))
    outcome(conn, "a1", Next.ERROR, now)
    outcome(conn, "d1", Next.ERROR, now)
    assert operations.retry(conn, cfg, "default", now, account_id="acme").requeued == 1
    assert row(conn, "d1")["status"] == "error"
    with pytest.raises(operations.Refused) as refused:
        operations.retry(conn, cfg, "default", now, account_id="ghost")
    assert refused.value.kind is operations.Refusal.NOT_FOUND


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"ids": ["a"], "status": "error"}, {"status": "sent"}, {"ids": ["a"], "account_id": "x"}],
)
def test_retry_needs_one_clear_selection(conn, cfg, kwargs):
    with pytest.raises(operations.Refused) as refused:
        operations.retry(conn, cfg, "default", time.time(), **kwargs)
    assert refused.value.kind is operations.Refusal.INVALID


def test_retry_through_the_api_and_the_cli(conn, cfg, client, run):
    now = time.time()
    enqueue(conn, cfg, message("e1"), message("e2"))
    outcome(conn, "e1", Next.ERROR, now)
    outcome(conn, "e2", Next.ERROR, now)
    answer = client.post("/commands/retry", json={"ids": ["e1", "zz"]}, headers=AUTH).json
    assert answer == {
        "ok": True, "requeued": 1, "attempts": "kept", "not_found": ["zz"], "not_retryable": [],
    }  # fmt: skip
    bad = client.post("/commands/retry", json={"status": "sent"}, headers=AUTH)
    assert bad.status_code == 400 and "status" in bad.json["error"]
    code, out, _ = run("retry", "--status", "error", "--reset-attempts", "--json")
    assert code == 0 and json.loads(out) == {"ok": True, "requeued": 1, "attempts": "reset"}
    code, _, err = run("retry")
    assert code == 2 and "--status" in err
    code, out, _ = run("retry", "e1", "missing")
    assert code == 1 and "not found: missing" in out and "not retryable" in out


def test_run_now_flush_pulls_retries_forward(conn, cfg, client, run):
    now = time.time()
    enqueue(conn, cfg, message("w1"), message("w2"))
    outcome(conn, "w1", Next.RETRY, now, ready_at=now + 3600)
    answer = client.post("/commands/run-now", json={"flush": True}, headers=AUTH).json
    assert answer == {"ok": True, "woken": 0, "flushed": 1, "probing": 0}
    assert row(conn, "w1")["status"] == "queued" and row(conn, "w1")["attempts"] == 1
    assert client.post("/commands/run-now", headers=AUTH).json == {"ok": True, "woken": 0}
    outcome(conn, "w2", Next.RETRY, now, ready_at=now + 3600)
    code, out, _ = run("run-now", "--flush")
    assert code == 0 and "1 messages waiting for a retry are ready now" in out


# -- usage -------------------------------------------------------------------------------------
def _account(account_id, **limits) -> Account:
    return Account.model_validate({**account(account_id), **limits})


def test_usage_counts_ledger_starts_against_each_limit(conn, cfg, client, run):
    now = time.time()
    operations.save_account(
        conn, cfg, "default", _account("acme", limit_per_minute=3, limit_per_day=10), now
    )
    ledger = Ledger(cfg.ratelimit_dir)
    limits = Limits(per_minute=3, per_day=10)
    for start in (now - 7200, now - 30, now - 20, now - 10):
        assert ledger.reserve("acme", limits, start) is None
    windows = {
        w["window"]: w for w in operations.usage(conn, cfg, "default", "acme", now)["windows"]
    }
    assert windows["per_minute"] == {
        "window": "per_minute", "seconds": 60, "limit": 3, "used": 3, "remaining": 0,
        "free_at": math.ceil(now - 30 + 60),  # the 3rd most recent start leaves the window
    }  # fmt: skip
    assert (windows["per_day"]["used"], windows["per_day"]["remaining"]) == (4, 6)
    assert windows["per_day"]["free_at"] is None
    assert (windows["per_second"]["limit"], windows["per_second"]["remaining"]) == (None, None)

    answer = client.get("/accounts/acme/usage", headers=AUTH)
    assert answer.status_code == 200 and answer.json["windows"][1]["used"] == 3
    assert client.get("/accounts/ghost/usage", headers=AUTH).status_code == 404
    code, out, _ = run("accounts", "usage")
    assert code == 0 and "3/3" in out and "4/10" in out and "(default)" in out
    assert run("accounts", "usage", "ghost")[0] == 1


def test_usage_counts_recorded_attempts_without_a_ledger(conn, cfg):
    now = time.time()
    enqueue(conn, cfg, message("a"), message("b"))
    outcome(conn, "a", Next.SENT, now - 5, result=Outcome.SENT)
    outcome(conn, "b", Next.ERROR, now - 120, result=Outcome.PERMANENT)
    windows = {
        w["window"]: w["used"] for w in operations.usage(conn, cfg, "default", None, now)["windows"]
    }
    assert windows == {"per_second": 0, "per_minute": 1, "per_hour": 2, "per_day": 2}


# -- status as a health check -----------------------------------------------------------------
def test_status_is_the_health_check(run, conn, var_dir):
    now = time.time()
    code, out, _ = run("status")
    assert code == 0 and "no process has recorded a heartbeat" in out
    store.heartbeats.beat(conn, "dispatcher-00", "dispatcher", 1, now)
    store.heartbeats.beat(conn, "reporter", "reporter", 2, now)
    code, out, _ = run("status", "--json")
    assert code == 0 and json.loads(out)["healthy"] is True
    store.heartbeats.beat(conn, "dispatcher-01", "dispatcher", 3, now - 61)
    code, out, _ = run("status")
    assert code == 1 and "dispatcher-01" in out and "STALE" in out and "problem:" in out
    data = json.loads(run("status", "--json")[1])
    assert data["healthy"] is False and [p["stale"] for p in data["processes"]] == [
        False, True, False,
    ]  # fmt: skip


def test_status_expects_heartbeats_while_supervisord_runs(run, conn, var_dir):
    assert run("init")[0] == 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(var_dir / "run" / "supervisor.sock"))
        listener.listen()
        code, out, _ = run("status")
    assert code == 1 and "No live dispatcher" in out and "No live reporter" in out


def test_status_without_a_database_exits_3(run):
    code, _, err = run("status")
    assert code == 3 and "asyncmail init" in err


def test_a_closed_pipe_is_no_traceback(run, conn, var_dir, ini):
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before anything is written: EPIPE for certain
    env = {**os.environ, "ASYNCMAIL_VAR_DIR": str(var_dir)}
    try:
        done = subprocess.run(
            [ASYNCMAIL, "--config", str(ini), "status"],
            stdout=writer, stderr=subprocess.PIPE, env=env, timeout=60,
        )  # fmt: skip
    finally:
        os.close(writer)
    assert done.returncode == 141 and done.stderr == b""


# -- backup and restore -----------------------------------------------------------------------
def test_backup_is_private_checked_and_never_overwrites(run, conn, cfg, tmp_path):
    enqueue(conn, cfg, message("m1"), message("m2"))
    target = tmp_path / "copy.db"
    code, out, _ = run("backup", str(target))
    assert code == 0 and "integrity ok" in out and "queued:2" in out
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".copy.db*"))  # no partial file left behind
    copy = store.backup.open_read_only(target)
    assert copy.execute("PRAGMA journal_mode").fetchone()["journal_mode"] == "delete"
    assert store.backup.summary(copy, time.time())["messages"]["queued"] == 2
    copy.close()
    code, _, err = run("backup", str(target))
    assert code == 1 and "exists" in err
    code, _, err = run("backup", str(tmp_path / "no-such-dir" / "x.db"))
    assert code == 3 and "cannot write" in err


def test_restore_puts_the_backup_back_and_keeps_the_previous(run, conn, cfg, var_dir, tmp_path):
    enqueue(conn, cfg, message("before"))
    target = tmp_path / "copy.db"
    assert run("backup", str(target))[0] == 0
    enqueue(conn, cfg, message("after"))
    store.heartbeats.beat(conn, "dispatcher-00", "dispatcher", 1, time.time() - 3600)
    conn.close()  # nothing may hold the database during a restore

    code, out, _ = run("restore", str(target), "--json")
    assert code == 0
    answer = json.loads(out)
    assert answer["messages"]["queued"] == 1 and answer["previous"]
    assert answer["maybe_sent"] == 1  # the old database may have sent "before" since the copy
    restored = store.db.connect(var_dir / "asyncmail.db")
    assert store.messages.get(restored, "default", "after", time.time()) is None
    assert store.messages.get(restored, "default", "before", time.time())["status"] == "queued"
    claimed = store.claims.claim(restored, "d:1", time.time(), 60, 10, True)
    assert [r["id"] for r in claimed.messages] == ["before"]
    assert (
        store.messages.get(restored, "default", "before", time.time())["possible_duplicate"] is True
    )
    assert store.heartbeats.list_all(restored, time.time()) == []
    assert stat.S_IMODE((var_dir / "asyncmail.db").stat().st_mode) == 0o600
    restored.close()
    kept = store.db.connect(answer["previous"], migrate=False)
    assert store.messages.get(kept, "default", "after", time.time())["status"] == "queued"
    kept.close()


def test_restore_refuses_a_bad_file_and_a_live_process(run, conn, cfg, tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    code, _, err = run("restore", str(junk))
    assert code == 1 and "junk.db" in err
    code, _, err = run("restore", str(tmp_path / "missing.db"))
    assert code == 1 and "not a file" in err
    good = tmp_path / "good.db"
    assert run("backup", str(good))[0] == 0
    store.heartbeats.beat(conn, "dispatcher-00", "dispatcher", 1, time.time())
    code, _, err = run("restore", str(good))
    assert code == 1 and "dispatcher-00" in err


def test_usage_of_a_ledger_too_large_to_read_comes_from_attempts(conn, cfg):
    now = time.time()
    big = {"limit_per_minute": 2, "limit_per_day": operations.LEDGER_READ_MAX + 1}
    operations.save_account(conn, cfg, "default", _account("bulk", **big), now)
    enqueue(conn, cfg, message("a", "bulk"), message("b", "bulk"))
    outcome(conn, "a", Next.SENT, now - 20, result=Outcome.SENT)
    outcome(conn, "b", Next.SENT, now - 10, result=Outcome.SENT)
    windows = {
        w["window"]: w for w in operations.usage(conn, cfg, "default", "bulk", now)["windows"]
    }
    assert windows["per_minute"]["used"] == 2 and windows["per_minute"]["remaining"] == 0
    assert windows["per_minute"]["free_at"] == math.ceil(now - 20 + 60)
    assert windows["per_day"]["remaining"] == operations.LEDGER_READ_MAX - 1
