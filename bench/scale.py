"""Enqueue and claim cost at 1,000 and 1,000,000 stored rows (SPEC §11).

Each size gets a fresh database made by the real migrations, filled in one transaction by a
recursive CTE with ``synchronous=OFF`` (the fill only), then measured over a connection
opened as the service opens it (``synchronous=FULL``, WAL).  Most rows are sent and
reported, a few errored, and ``PENDING_SHARE`` wait unsent across ``ACCOUNTS`` accounts and
the default account, spread over the four priorities, as on a relay that has run for a
while.  The figures are milliseconds per operation; what scales is the index work, which
should stay O(log n): the claim reads only the partial ``messages_claim`` index.

The service keeps WAL checkpoints off the claim and enqueue paths: the reporter checkpoints
every ``CHECKPOINT_EVERY`` seconds on its own connection, and SQLite's automatic checkpoint
is only a fallback at ``WAL_AUTOCHECKPOINT_PAGES`` (common/store/db.py).  The bench runs the
same checkpointer in a thread beside the measurements.  ``claim_checkpoint_in_commit`` is
the claim on a second, identically filled database with SQLite's default instead (a
checkpoint every ~1000 written pages, inside whichever commit crosses the threshold): the
first such checkpoint fsyncs the database file and with it the whole bulk load (hundreds
of MB at a million rows, as after a large import or a long outage), and a claim waits for
it.  Its p99 (with 50 claims, their slowest) is what the reporter's checkpoint saves.

``ledger_reserve`` is the cost of one rate-limit reservation (docs/ratelimit.md): the same
for a limit of 5 per second as for 100,000 per day.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from common import store
from common.addresses import new_message_id
from common.ratelimit import Ledger, Limits
from reporter.reporter import CHECKPOINT_EVERY

SIZES = (1_000, 1_000_000)
ACCOUNTS = 4  # plus the default account: five claim batches per claim
PENDING_SHARE = 0.02  # unsent rows; the rest are terminal
MIN_PENDING = 250  # the small database still has a full claim's worth of work
ERROR_EVERY = 50  # one terminal row in 50 is an error rather than a sent message
SINGLE_ENQUEUES = 200
BATCHES = 5
BATCH_SIZE = 1000
CLAIMS = 50
SQLITE_AUTOCHECKPOINT = 1000  # pages: SQLite's default, which checkpoints inside commits
WARMUP_CLAIMS = 3  # the first claims after the fill read the index pages from disk
BATCH_PER_ACCOUNT = 50  # the default batch_size_per_account
LEASE_SECONDS = 120
RESERVATIONS = 5000
# a small limit and a day limit of 100,000: a reservation must cost the same for both
LEDGER_LIMITS = {
    "per_second_5": Limits(per_second=5),
    "per_day_100000": Limits(per_second=1000, per_day=100_000),
}
PAYLOAD = (
    '{"id":"%s","from":"bench@example.com","to":["rcpt@example.com"],'
    '"subject":"scale bench","body":"a body of a realistic if short length"}'
)

_FILL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :rows)
INSERT INTO messages (tenant_id, id, account_id, priority, payload, created_at, updated_at,
                      sent_ts, error_ts, error, reported_ts, ready_at, enqueued_at, attempts,
                      outcome_at)
SELECT 'default', 'fill-' || i,
       CASE WHEN i % (:accounts + 1) = 0 THEN NULL ELSE 'acct-' || (i % (:accounts + 1)) END,
       i % 4,
       printf(:payload, 'fill-' || i),
       CAST(:t0 + i * :step AS INTEGER), CAST(:t0 + i * :step AS INTEGER),
       CASE WHEN i > :pending AND i % :error_every != 0 THEN CAST(:t0 + i * :step AS INTEGER) END,
       CASE WHEN i > :pending AND i % :error_every = 0 THEN CAST(:t0 + i * :step AS INTEGER) END,
       CASE WHEN i > :pending AND i % :error_every = 0 THEN '550 no such user' END,
       CASE WHEN i > :pending THEN CAST(:t0 + i * :step AS INTEGER) + 1 END,
       :t0 + i * :step, :t0 + i * :step,
       CASE WHEN i > :pending THEN 1 ELSE 0 END,
       CASE WHEN i > :pending THEN :t0 + i * :step END
FROM n
"""


def _fill(path: Path, rows: int, now: float) -> int:
    """Create the database with ``rows`` messages; returns how many are pending."""
    pending = max(MIN_PENDING, int(rows * PENDING_SHARE))
    conn = store.db.connect(path, "OFF")
    try:
        with store.db.write(conn):
            conn.executemany(
                "INSERT INTO accounts(tenant_id, id, host, port, created_at, updated_at) "
                "VALUES ('default', ?, '127.0.0.1', 25, ?, ?)",
                [(f"acct-{n}", int(now), int(now)) for n in range(1, ACCOUNTS + 1)],
            )
            conn.execute(
                _FILL,
                {
                    "rows": rows,
                    "accounts": ACCOUNTS,
                    "payload": PAYLOAD,
                    "t0": now - 86400,
                    "step": 86400 / rows,
                    "pending": pending,
                    "error_every": ERROR_EVERY,
                },
            )
        conn.execute("ANALYZE")
    finally:
        conn.close()
    return pending


def _message(tag: str, n: int) -> store.messages.NewMessage:
    message_id = f"{tag}-{n}"
    account = None if n % (ACCOUNTS + 1) == 0 else f"acct-{n % (ACCOUNTS + 1)}"
    payload = {"id": message_id, "from": "bench@example.com", "to": ["rcpt@example.com"]}
    header = new_message_id("example.com", n / 1000)  # as intake makes them: time-ordered
    return store.messages.NewMessage(message_id, account, n % 4, payload, None, header)


def _ms(seconds: list[float]) -> dict:
    """p50, p99, mean and max in milliseconds (a checkpoint inside a commit shows in max)."""
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(p99 * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


def _forget(conn, ids: list[str]) -> None:
    """Remove rows the bench added, so every measurement sees the same table size."""
    with store.db.write(conn):
        conn.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids])


def _enqueue_costs(conn) -> dict:
    singles = []
    for n in range(SINGLE_ENQUEUES):
        message = _message("single", n)
        started = time.perf_counter()
        store.messages.enqueue(conn, "default", [message], time.time())
        singles.append(time.perf_counter() - started)
    _forget(conn, [f"single-{n}" for n in range(SINGLE_ENQUEUES)])
    batches = []
    for b in range(BATCHES):
        messages = [_message(f"batch{b}", n) for n in range(BATCH_SIZE)]
        started = time.perf_counter()
        store.messages.enqueue(conn, "default", messages, time.time())
        batches.append(time.perf_counter() - started)
        _forget(conn, [m.id for m in messages])
    return {
        "enqueue_single": _ms(singles),
        "enqueue_batch_1000": _ms(batches),
        "enqueue_batch_per_message_ms": round(statistics.median(batches) / BATCH_SIZE * 1000, 4),
    }


def _claim_costs(conn) -> dict:
    """Claim a full batch per account, then give it back (release is not timed)."""
    timings, claimed = [], 0
    for n in range(WARMUP_CLAIMS + CLAIMS):
        now = time.time()
        started = time.perf_counter()
        taken = store.claims.claim(conn, "bench", now, LEASE_SECONDS, BATCH_PER_ACCOUNT, True)
        if n >= WARMUP_CLAIMS:
            timings.append(time.perf_counter() - started)
        claimed = len(taken.messages)
        store.claims.release(conn, [store.claims.key(m) for m in taken.messages], "bench", now)
    idle = []
    for _ in range(CLAIMS):  # nothing ready yet: the cost of an idle dispatcher's poll
        started = time.perf_counter()
        store.claims.claim(conn, "bench", 0.0, LEASE_SECONDS, BATCH_PER_ACCOUNT, True)
        idle.append(time.perf_counter() - started)
    return {
        "claim": _ms(timings),
        "claimed_per_claim": claimed,
        "claim_per_message_ms": round(statistics.median(timings) / max(claimed, 1) * 1000, 4),
        "claim_nothing_ready": _ms(idle),
    }


@contextlib.contextmanager
def _checkpointer(path: Path) -> Iterator[None]:
    """The reporter's periodic checkpoint, on its own connection, while the block runs."""
    done = threading.Event()

    def run() -> None:
        conn = store.db.connect(path, "FULL", migrate=False)
        while not done.wait(CHECKPOINT_EVERY):
            store.db.checkpoint(conn)
        conn.close()

    thread = threading.Thread(target=run, name="checkpointer")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _claim_with_checkpoints_in_commits(path: Path, rows: int) -> dict:
    """The claim with SQLite's default automatic checkpoint and no checkpointer (as before)."""
    _fill(path, rows, time.time())
    conn = store.db.connect(path, "FULL")
    try:
        conn.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT}")
        return _claim_costs(conn)["claim"]
    finally:
        conn.close()


def measure(rows: int, directory: Path) -> dict:
    """Every figure for one table size."""
    path = directory / f"scale-{rows}.db"
    started = time.perf_counter()
    pending = _fill(path, rows, time.time())
    figures = {"rows": rows, "pending": pending}
    figures["fill_seconds"] = round(time.perf_counter() - started, 1)
    conn = store.db.connect(path, "FULL")
    try:
        with _checkpointer(path):
            figures.update(_claim_costs(conn))
            figures.update(_enqueue_costs(conn))
    finally:
        conn.close()
    figures["db_megabytes"] = round(path.stat().st_size / 1e6, 1)
    figures["claim_checkpoint_in_commit"] = _claim_with_checkpoints_in_commits(
        directory / f"scale-{rows}-in-commit.db", rows
    )
    return figures


def ledger_costs(directory: Path) -> dict:
    """Microseconds per rate-limit reservation (granted or refused) for each of LEDGER_LIMITS."""
    ledger, figures = Ledger(directory / "ratelimit"), {}
    for name, limits in LEDGER_LIMITS.items():
        now, timings = time.time(), []
        ledger.reserve(name, limits, now)  # creates the file: not a steady-state reservation
        for _ in range(RESERVATIONS):
            now += 0.05
            started = time.perf_counter()
            ledger.reserve(name, limits, now)
            timings.append(time.perf_counter() - started)
        ms = _ms(timings)
        figures[name] = {key.replace("_ms", "_us"): round(v * 1000, 1) for key, v in ms.items()}
        figures[name]["file_bytes"] = ledger.path_for(name).stat().st_size
    return figures


def run() -> dict:
    """Enqueue and claim cost at each of SIZES stored rows; the ledger's reservation cost."""
    with tempfile.TemporaryDirectory(prefix="asyncmail-scale-") as tmp:
        figures = {f"rows_{rows}": measure(rows, Path(tmp)) for rows in SIZES}
        figures["ledger_reserve"] = ledger_costs(Path(tmp))
        return figures


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
