"""A database as gnr-async-mail-service leaves it: its schema, accounts and messages.

The schema is the reference's as of October 2025 (its ``persistence.py``): accounts with
passwords in clear and a 0/1 ``use_tls``, messages whose ``payload`` is the JSON the client
sent, text ``created_at``/``updated_at``, and its ``send_log``.  Tests use it to check that
this service refuses such a file as its own database and that the importer moves it over.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE accounts (
    id TEXT PRIMARY KEY, host TEXT NOT NULL, port INTEGER NOT NULL, user TEXT, password TEXT,
    ttl INTEGER DEFAULT 300, limit_per_minute INTEGER, limit_per_hour INTEGER,
    limit_per_day INTEGER, limit_behavior TEXT, use_tls INTEGER,
    created_at TEXT DEFAULT CURRENT_TIMESTAMP, batch_size INTEGER
);
CREATE TABLE send_log (account_id TEXT, timestamp INTEGER);
CREATE TABLE messages (
    id TEXT PRIMARY KEY, account_id TEXT, priority INTEGER NOT NULL DEFAULT 2,
    payload TEXT NOT NULL, created_at TEXT DEFAULT CURRENT_TIMESTAMP,
    updated_at TEXT DEFAULT CURRENT_TIMESTAMP, deferred_ts INTEGER, sent_ts INTEGER,
    error_ts INTEGER, error TEXT, reported_ts INTEGER
);
"""


def make_reference_db(path: Path, accounts: list[dict], messages: list[dict]) -> Path:
    """The file at ``path``; messages: {"payload": {...}, "sent_ts"?, "error_ts"?, ...}."""
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    for account in accounts:
        names = ", ".join(account)
        marks = ", ".join("?" for _ in account)
        db.execute(f"INSERT INTO accounts ({names}) VALUES ({marks})", tuple(account.values()))
    for entry in messages:
        payload = entry["payload"]
        db.execute(
            "INSERT INTO messages (id, account_id, priority, payload, sent_ts, error_ts, "
            "error, reported_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (payload["id"], payload.get("account_id"), payload.get("priority", 2),
             json.dumps(payload), entry.get("sent_ts"), entry.get("error_ts"),
             entry.get("error"), entry.get("reported_ts")),
        )  # fmt: skip
    db.commit()
    db.close()
    return path
