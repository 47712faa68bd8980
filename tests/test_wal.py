"""The WAL stays bounded: the reporter checkpoints it, SQLite's own checkpoint is the fallback,
and a WAL file that grew large is cut back to JOURNAL_SIZE_LIMIT."""

from __future__ import annotations

from common import store
from reporter.reporter import Reporter
from tests.support.factories import T0

MIB = 1024 * 1024


def write_mib(conn, n: int, tag: str = "big") -> None:
    """n MiB of new messages, one MiB per transaction."""
    for i in range(n):
        body = {"id": f"{tag}-{i}", "body": "x" * MIB}
        store.messages.enqueue(
            conn,
            "default",
            [
                store.messages.NewMessage(
                    f"{tag}-{i}", None, 2, body, None, f"<{tag}-{i}@x.example>"
                )
            ],
            T0,
        )


def frames_in_wal(conn) -> int:
    """How many frames the WAL holds (asking checkpoints them too)."""
    return store.db.checkpoint(conn)["log"]


def test_every_connection_bounds_the_wal(conn):
    limit = conn.execute("PRAGMA journal_size_limit").fetchone()["journal_size_limit"]
    pages = conn.execute("PRAGMA wal_autocheckpoint").fetchone()["wal_autocheckpoint"]
    assert (limit, pages) == (store.db.JOURNAL_SIZE_LIMIT, store.db.WAL_AUTOCHECKPOINT_PAGES)


def test_without_the_reporter_the_wal_never_outgrows_the_fallback(conn, config):
    """The reporter is down: the commit that crosses the threshold checkpoints instead."""
    page = conn.execute("PRAGMA page_size").fetchone()["page_size"]
    ceiling = store.db.WAL_AUTOCHECKPOINT_PAGES * page + 2 * MIB  # + the crossing transaction
    largest = 0
    for round_ in range(3):
        write_mib(conn, 40, tag=f"r{round_}")
        largest = max(largest, store.db.file_sizes(config.database)["wal"])
    assert 0 < largest <= ceiling


def test_a_wal_grown_past_the_limit_is_cut_back_after_a_checkpoint(conn, config):
    reader = store.db.connect(config.database)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM messages").fetchall()  # a snapshot no checkpoint passes
    write_mib(conn, 80)
    assert store.db.file_sizes(config.database)["wal"] > store.db.JOURNAL_SIZE_LIMIT
    reader.execute("COMMIT")
    reader.close()
    assert store.db.checkpoint(conn)["busy"] == 0
    write_mib(conn, 1, tag="after")  # the next writer restarts the WAL and trims the file
    assert store.db.file_sizes(config.database)["wal"] <= store.db.JOURNAL_SIZE_LIMIT


def test_the_reporter_checkpoints_so_the_next_writer_restarts_the_wal(make_config, conn):
    pages_per_mib = MIB // conn.execute("PRAGMA page_size").fetchone()["page_size"]
    write_mib(conn, 4)
    write_mib(conn, 1, tag="alone")
    assert frames_in_wal(conn) >= 5 * pages_per_mib  # nobody checkpointed: the WAL grew
    config = make_config()
    own = store.db.connect(config.database)  # the reporter's own connection, as in its process
    reporter = Reporter(config, own, T0)
    write_mib(conn, 4, tag="again")
    reporter.run_once(T0)
    write_mib(conn, 1, tag="after")
    assert frames_in_wal(conn) < 2 * pages_per_mib  # only what came after its checkpoint
    reporter.close()
    own.close()
