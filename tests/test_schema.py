"""An existing database migrates cleanly to the current schema, its data intact."""

from __future__ import annotations

import apsw

from common import store
from tests.support.factories import T0


def test_a_version_2_database_migrates_with_its_rows(tmp_path):
    path = tmp_path / "old.db"
    old = apsw.Connection(str(path))
    old.execute("PRAGMA journal_mode=WAL")
    for number, migration in enumerate(store.db.MIGRATIONS[:2], start=1):
        old.execute(migration)
        old.execute(f"PRAGMA user_version={number}")
    old.execute(
        "INSERT INTO accounts(id, host, port, created_at, updated_at) "
        "VALUES ('acme', 'smtp.acme.test', 25, 1, 1)"
    )
    old.execute(
        "INSERT INTO messages(id, account_id, payload, created_at, updated_at, ready_at, "
        "enqueued_at) VALUES ('m1', 'acme', '{}', 1, 1, 1, 1)"
    )
    old.close()
    conn = store.db.connect(path)
    assert store.db.schema_version(conn) == store.db.SCHEMA_VERSION
    [account] = store.accounts.list_all(conn, "default")
    assert account["max_recipients_per_transaction"] == 100
    claim = store.claims.claim(conn, "d:1", T0, 60, 10, False)
    assert [m["id"] for m in claim.messages] == ["m1"] and claim.circuits == {}
    assert claim.messages[0]["rcpt_done"] is None
    conn.close()
