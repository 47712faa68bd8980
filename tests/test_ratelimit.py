"""The rate-limit ledger in one process, with a controllable clock (common.ratelimit)."""

from __future__ import annotations

import fcntl
import logging
import os
import random
import stat
import threading

import pytest

from common import ratelimit, store
from common.ratelimit import Ledger, Limits
from common.store.db import write
from tests.support.factories import T0
from tests.support.ratelimit import assert_strict


@pytest.fixture
def ledger(tmp_path):
    return Ledger(tmp_path / "ratelimit")


def accept_all(ledger, limits, times, account_id="acct"):
    """Reserve at each time; the times that were granted."""
    return [t for t in times if ledger.reserve(account_id, limits, t) is None]


def reference_free_at(accepted, limits, t):
    """Brute force: when a start at t would fit every window (None: it fits now)."""
    blockers = []
    for limit, seconds in limits.windows():
        in_window = sorted(s for s in accepted if s + seconds > t)
        if len(in_window) >= limit:
            blockers.append(in_window[-limit] + seconds)
    return max(blockers) if blockers else None


# -- Limits -----------------------------------------------------------------------------------
def test_limits_from_account_row():
    row = {"id": "a", "limit_per_second": 5, "limit_per_minute": None, "limit_per_day": 100}
    limits = Limits.from_account(row)
    assert limits == Limits(per_second=5, per_day=100)
    assert limits.windows() == [(5, 1.0), (100, 86400.0)]
    assert limits and limits.capacity == 100 and limits.longest == 86400.0


def test_no_limits_is_false_and_reserves_without_a_file(ledger):
    assert not Limits.from_account(None)
    assert not Limits.from_account({"limit_per_second": None})
    assert ledger.reserve("acct", Limits(), T0) is None
    assert not ledger.path_for("acct").exists()


def test_limits_below_one_are_refused():
    with pytest.raises(ValueError, match="per_hour"):
        Limits(per_hour=0)


# -- file names and modes ---------------------------------------------------------------------
def test_file_names_are_safe_and_distinct():
    ids = [None, "default", "acct", "a/b", "../x", "..", ".", "a b", "é", "x" * 300, "a~b", "a_b"]
    names = [ratelimit.file_name(i) for i in ids]
    assert len(set(names)) == len(names)
    for name in names:
        assert "/" not in name and name not in {".", ".."} and len(name) < 255
    assert ratelimit.file_name(None) == "default.ledger"


def test_directory_0700_and_file_0600(tmp_path):
    ledger = Ledger(tmp_path / "var" / "ratelimit")
    old = os.umask(0)
    try:
        ledger.reserve(None, Limits(per_second=1), T0)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(ledger.directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ledger.path_for(None)).st_mode) == 0o600


# -- decisions --------------------------------------------------------------------------------
def test_per_second_limit_and_earliest_free_time(ledger):
    limits = Limits(per_second=5)
    assert accept_all(ledger, limits, [T0 + i * 0.1 for i in range(5)]) == [
        T0 + i * 0.1 for i in range(5)
    ]
    assert ledger.reserve("acct", limits, T0 + 0.5) == T0 + 1.0  # the oldest of the 5 frees
    assert ledger.reserve("acct", limits, T0 + 0.999) == T0 + 1.0
    assert ledger.reserve("acct", limits, T0 + 1.0) is None
    assert ledger.reserve("acct", limits, T0 + 1.05) == T0 + 1.1
    # the ring keeps as many starts as the largest limit
    assert ledger.starts("acct") == [T0 + i * 0.1 for i in range(1, 5)] + [T0 + 1.0]


def test_accounts_are_independent(ledger):
    limits = Limits(per_second=1)
    assert ledger.reserve("a", limits, T0) is None
    assert ledger.reserve("b", limits, T0) is None
    assert ledger.reserve(None, limits, T0) is None
    assert ledger.reserve("a", limits, T0 + 0.5) == T0 + 1.0


def test_combined_minute_and_second_limits_follow_the_clock(ledger):
    """Always retry at the returned time: 2 per second until 5 per minute are used up."""
    limits = Limits(per_second=2, per_minute=5)
    now, sent = T0, []
    while len(sent) < 12:
        frees = ledger.reserve("acct", limits, now)
        if frees is None:
            sent.append(now)
        else:
            assert frees > now
            now = frees
    assert sent[:5] == [T0, T0, T0 + 1, T0 + 1, T0 + 2]
    assert sent[5:7] == [T0 + 60, T0 + 60]  # the minute window frees the first two together
    assert_strict(sent, limits)


def test_earliest_time_is_the_latest_blocking_window(ledger):
    limits = Limits(per_second=1, per_minute=2)
    assert ledger.reserve("acct", limits, T0) is None
    assert ledger.reserve("acct", limits, T0 + 1) is None
    # the second window frees at T0 + 2, the minute window only at T0 + 60
    assert ledger.reserve("acct", limits, T0 + 1.5) == T0 + 60


def test_a_clock_stepping_back_never_breaks_the_windows(ledger):
    limits = Limits(per_second=2)
    assert accept_all(ledger, limits, [T0 + 10, T0 + 10.5]) == [T0 + 10, T0 + 10.5]
    # the host clock steps back 5 s: the start counts as T0 + 10.5, so it waits for T0 + 11
    assert ledger.reserve("acct", limits, T0 + 5) == T0 + 11
    assert ledger.starts("acct") == [T0 + 10, T0 + 10.5]


@pytest.mark.parametrize("seed", range(6))
def test_random_reservations_match_brute_force_and_stay_strict(ledger, seed):
    """Many reservations at increasing random times, small limits so the ring wraps often."""
    rng = random.Random(seed)
    limits = Limits(
        per_second=rng.choice([None, 1, 2, 3]),
        per_minute=rng.choice([None, 4, 7, 20]),
        per_hour=rng.choice([None, 30, 50]),
    )
    if not limits:
        limits = Limits(per_second=2)
    now, accepted = T0, []
    for _ in range(600):
        now += rng.choice([0.0, 0.001, 0.3, 0.9, 1.0, 2.5, 15.0, 61.0, 400.0])
        expected = reference_free_at(accepted, limits, now)
        got = ledger.reserve("acct", limits, now)
        assert got == expected
        if got is None:
            accepted.append(now)
        else:  # the returned moment really is free, and nothing earlier was
            assert got > now
    assert len(accepted) > 50
    assert_strict(accepted, limits)
    assert ledger.starts("acct") == accepted[-limits.capacity :]


# -- limits changing --------------------------------------------------------------------------
def test_raising_a_limit_keeps_the_history(ledger):
    assert accept_all(ledger, Limits(per_minute=2), [T0, T0 + 1]) == [T0, T0 + 1]
    assert ledger.reserve("acct", Limits(per_minute=3), T0 + 2) is None
    assert ledger.reserve("acct", Limits(per_minute=3), T0 + 3) == T0 + 60
    assert ledger.reserve("acct", Limits(per_minute=1), T0 + 4) == T0 + 62


def test_a_longer_window_asks_the_database_for_older_sends(tmp_path):
    calls = []

    def rebuild(account_id, since):
        calls.append((account_id, since))
        return [T0 - 7200, T0 - 3000]  # sends the ledger never saw (older than its history)

    ledger = Ledger(tmp_path, rebuild)
    assert ledger.reserve("acct", Limits(per_second=3), T0) is None
    assert ledger.reserve("acct", Limits(per_second=3, per_day=3), T0 + 1) == T0 - 7200 + 86400
    assert calls == [("acct", T0 - 1), ("acct", T0 + 1 - 86400)]
    assert ledger.reserve("acct", Limits(per_second=3, per_day=3), T0 + 2) == T0 - 7200 + 86400
    assert len(calls) == 2  # the rewritten ring now covers the day: no more rebuilds


# -- corruption and rebuild ---------------------------------------------------------------------
class FakeAttempts:
    """The attempts table as the rebuild callable sees it; ``calls`` logs each question."""

    def __init__(self):
        self.starts: list[float] = []
        self.calls: list[tuple[str | None, float]] = []

    def __call__(self, account_id, since):
        self.calls.append((account_id, since))
        if isinstance(self.starts, Exception):
            raise self.starts
        return [t for t in self.starts if t >= since]


RECORDED = [T0, T0 + 0.1, T0 + 0.2]


def _recorded(tmp_path):
    """A ledger that granted RECORDED (per_second=3), with a database that knows them."""
    attempts = FakeAttempts()
    ledger = Ledger(tmp_path, attempts)
    assert accept_all(ledger, Limits(per_second=3), RECORDED) == RECORDED
    attempts.starts = list(RECORDED)
    attempts.calls.clear()
    return ledger, attempts


def _garbage(path):
    path.write_bytes(os.urandom(4096))


def _truncated(path):
    os.truncate(path, os.path.getsize(path) - 5)


def _flip_header(path):
    data = bytearray(path.read_bytes())
    data[30] ^= 0x01  # inside the header, past the magic
    path.write_bytes(bytes(data))


def _flip_slot(path):
    data = bytearray(path.read_bytes())
    data[ratelimit.HEADER_SIZE + 3] ^= 0x40  # the oldest start: the one the next check reads
    path.write_bytes(bytes(data))


def _zeroed(path):
    path.write_bytes(bytes(os.path.getsize(path)))


def _empty(path):
    path.write_bytes(b"")


@pytest.mark.parametrize(
    "damage", [_garbage, _truncated, _flip_header, _flip_slot, _zeroed, _empty]
)
def test_a_corrupt_ledger_is_rebuilt_from_the_database(tmp_path, damage, caplog):
    """The rebuilt ring holds the database's starts, so the limit still holds."""
    caplog.set_level(logging.INFO, logger="common.ratelimit")
    ledger, attempts = _recorded(tmp_path)
    damage(ledger.path_for("acct"))
    assert ledger.reserve("acct", Limits(per_second=3), T0 + 0.5) == T0 + 1.0
    assert attempts.calls == [("acct", T0 + 0.5 - 1.0)]
    assert "ratelimit ledger rebuilt" in caplog.text
    assert ledger.reserve("acct", Limits(per_second=3), T0 + 1.0) is None
    assert len(attempts.calls) == 1  # sound again: no second rebuild
    assert ledger.starts("acct") == [T0 + 0.1, T0 + 0.2, T0 + 1.0]


def test_without_a_database_a_corrupt_ledger_starts_empty(tmp_path):
    ledger = Ledger(tmp_path)
    assert accept_all(ledger, Limits(per_second=3), RECORDED) == RECORDED
    _garbage(ledger.path_for("acct"))
    assert ledger.reserve("acct", Limits(per_second=3), T0 + 0.5) is None


def test_a_failing_rebuild_raises_and_is_retried_next_time(tmp_path):
    ledger, attempts = _recorded(tmp_path)
    _garbage(ledger.path_for("acct"))
    attempts.starts = OSError("database unavailable")
    with pytest.raises(OSError):
        ledger.reserve("acct", Limits(per_second=3), T0 + 0.5)
    attempts.starts = list(RECORDED)
    assert ledger.reserve("acct", Limits(per_second=3), T0 + 0.5) == T0 + 1.0


def test_a_ledger_from_before_a_reboot_is_merged_with_the_database(tmp_path, monkeypatch):
    """A crash of the host may lose unflushed writes: the database fills in older starts."""
    ledger, attempts = _recorded(tmp_path)
    attempts.starts = [T0 - 0.5, T0 + 0.15]  # only what is older than the ring is taken
    monkeypatch.setattr(ratelimit, "boot_id", lambda: b"\x01" * 16)
    assert ledger.reserve("acct", Limits(per_second=4), T0 + 0.3) == T0 + 0.5
    assert ledger.starts("acct") == [T0 - 0.5, T0, T0 + 0.1, T0 + 0.2]


def test_a_torn_append_is_detected(tmp_path):
    """Killed between writing a slot and the header: the slot is newer than the header says."""
    ledger, attempts = _recorded(tmp_path)
    with open(ledger.path_for("acct"), "r+b") as handle:  # what the next append writes
        handle.seek(ratelimit.HEADER_SIZE)
        handle.write(ratelimit.SLOT.pack(T0 + 1.5, ratelimit._slot_crc(0, T0 + 1.5)))
    assert ledger.reserve("acct", Limits(per_second=3), T0 + 0.5) == T0 + 1.0
    assert len(attempts.calls) == 1


# -- the database side of a rebuild -------------------------------------------------------------
def test_send_starts_reads_only_attempts_that_began_a_send(conn):
    with write(conn):
        conn.execute(
            "INSERT INTO accounts(tenant_id, id, host, port, created_at, updated_at) "
            "VALUES ('default', 'acct', 'h', 25, 0, 0)"
        )
        for n, account in enumerate(["acct", None]):
            conn.execute(
                "INSERT INTO messages(tenant_id, id, account_id, payload, created_at, updated_at, "
                "ready_at, enqueued_at) VALUES ('default', ?, ?, '{}', 0, 0, 0, 0)",
                (f"m{n}", account),
            )
        rows = [
            ("m0", "acct", T0 - 10, "sent"),
            ("m0", "acct", T0 + 1, "temporary"),
            ("m0", "acct", T0 + 2, "permanent"),
            ("m0", "acct", T0 + 3, "uncertain"),
            ("m0", "acct", T0 + 4, "deferred"),
            ("m0", "acct", T0 + 5, "rejected"),
            ("m1", None, T0 + 6, "sent"),
        ]
        conn.executemany(
            "INSERT INTO attempts(tenant_id, message_id, account_id, ts, outcome) "
            "VALUES ('default', ?, ?, ?, ?)",
            rows,
        )
    assert store.attempts.send_starts(conn, "default", "acct", T0) == [T0 + 1, T0 + 2, T0 + 3]
    assert store.attempts.send_starts(conn, "default", None, T0) == [T0 + 6]
    assert store.attempts.send_starts(conn, "default", "other", 0) == []


def test_a_ledger_removed_while_a_process_waits_for_its_lock_is_not_split(ledger):
    """The waiter wakes on a deleted file; it must lock the file every newcomer will use."""
    limits = Limits(per_second=1)
    assert ledger.reserve("acct", limits, T0) is None
    path = ledger.path_for("acct")
    holder = os.open(path, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    result: list = []
    waiter = threading.Thread(target=lambda: result.append(ledger.reserve("acct", limits, T0)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()
    path.unlink()  # an operator clears var/ratelimit/ while the service runs
    os.close(holder)  # releases the lock on the old, now nameless, file
    waiter.join(10)
    assert result == [None]  # a fresh ledger: nothing known, so the slot is free
    assert ledger.starts("acct") == [T0]
    assert ledger.reserve("acct", limits, T0 + 0.5) == T0 + 1
