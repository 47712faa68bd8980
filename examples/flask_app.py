"""An application that keeps its outgoing mail in its own table: the pattern to copy.

1. ``POST /send`` writes the mail into the ``outbox`` table first (status ``pending``), then
   queues every pending row through async-mail-service under the row's id.  If the service is
   unreachable the row stays ``pending`` and the next ``/send`` (or ``POST /flush``, from a
   cron job) queues it again: the id makes a repeat harmless.
2. The service POSTs signed delivery reports to ``/proxy_sync``; each item updates the row of
   the same id to ``sent`` or ``error``.  Reports come at least once, so the update is
   idempotent.

Run it (in this repository: .venv/bin/python examples/flask_app.py), with the service's
``[client] client_sync_url = http://127.0.0.1:5000/proxy_sync`` and the same signing key:

    MAIL_API_URL      the service (http://127.0.0.1:8000)
    MAIL_API_TOKEN    its [server] api_token, if set
    MAIL_API_RETRIES  retries of a request on 503 or a connection error (5)
    MAIL_ACCOUNT      the account_id to send with (none: the service's [smtp] account)
    MAIL_FROM         the sender (App <app@example.com>)
    REPORT_SIGNING_KEY  the service's [client] client_sync_signing_key (required)
    OUTBOX_DB         this application's database (outbox.db)
    PORT              where this application listens (5000)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import time
import uuid

import requests
from asyncmail_client import MailClient, MailError
from flask import Flask, abort, g, jsonify, request

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY, recipient TEXT NOT NULL, subject TEXT NOT NULL, body TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',      -- pending, queued, sent, error
    error TEXT, created_at INTEGER NOT NULL, sent_ts INTEGER, error_ts INTEGER
)
"""
MAX_AGE = 300  # seconds: an older signed report is refused as a possible replay


def verify(key: bytes, headers, body: bytes, max_age: int = MAX_AGE) -> bool:
    """The signature check of docs/reporting.md: HMAC-SHA256 of timestamp + raw body."""
    ts = headers.get("X-AsyncMail-Timestamp", "")
    if not ts.isdigit() or abs(time.time() - int(ts)) > max_age:
        return False  # missing, stale, or from the future: a replay
    expected = hmac.new(key, ts.encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers.get("X-AsyncMail-Signature", ""))


def create_app(settings: dict | None = None) -> Flask:
    """The application; ``settings`` overrides the environment (tests)."""
    app = Flask(__name__)
    env = {**os.environ, **(settings or {})}
    app.config.update(
        DB=env.get("OUTBOX_DB", "outbox.db"),
        KEY=env["REPORT_SIGNING_KEY"].encode(),
        ACCOUNT=env.get("MAIL_ACCOUNT") or None,
        FROM=env.get("MAIL_FROM", "App <app@example.com>"),
        MAIL=MailClient(
            env.get("MAIL_API_URL", "http://127.0.0.1:8000"),
            env.get("MAIL_API_TOKEN"),
            retries=int(env.get("MAIL_API_RETRIES", "5")),
        ),
    )
    with sqlite3.connect(app.config["DB"]) as conn:
        conn.execute(SCHEMA)

    def db() -> sqlite3.Connection:
        if "db" not in g:
            g.db = sqlite3.connect(app.config["DB"])
            g.db.row_factory = sqlite3.Row
        return g.db

    @app.teardown_appcontext
    def close_db(_exc):
        if (conn := g.pop("db", None)) is not None:
            conn.close()

    def queue_pending() -> int:
        """Queue every pending row; the ones that did not go stay pending for the next try."""
        rows = db().execute("SELECT * FROM outbox WHERE status = 'pending'").fetchall()
        messages = [
            {"id": r["id"], "account_id": app.config["ACCOUNT"], "from": app.config["FROM"],
             "to": r["recipient"], "subject": r["subject"], "body": r["body"]}
            for r in rows
        ]  # fmt: skip
        if not messages:
            return 0
        try:
            rejected = app.config["MAIL"].add_messages(messages)
        except (MailError, requests.RequestException) as exc:
            app.logger.warning("mail service: %s; rows stay pending", exc)
            return 0
        refused = {r["id"]: r["reason"] for r in rejected}
        for m in messages:  # a refused message is final: say why in its row
            status, error = ("error", refused[m["id"]]) if m["id"] in refused else ("queued", None)
            db().execute(
                "UPDATE outbox SET status = ?, error = ? WHERE id = ? AND status = 'pending'",
                (status, error, m["id"]),
            )
        db().commit()
        return len(messages) - len(refused)

    @app.post("/send")
    def send():
        mail = request.get_json(force=True)
        mail_id = f"outbox-{uuid.uuid4()}"
        db().execute(
            "INSERT INTO outbox (id, recipient, subject, body, created_at) VALUES (?, ?, ?, ?, ?)",
            (mail_id, mail["to"], mail["subject"], mail["body"], int(time.time())),
        )
        db().commit()  # the mail exists in our table before anyone else hears of it
        queue_pending()
        return jsonify(outbox(mail_id)), 201

    @app.post("/flush")
    def flush():
        return jsonify(queued=queue_pending())

    @app.post("/proxy_sync")
    def proxy_sync():
        if not verify(app.config["KEY"], request.headers, request.get_data()):
            abort(401)
        report = request.get_json(force=True)
        items = report.get("delivery_report", report.get("reports", []))
        for item in items:  # sent or error; a repeated item writes the same values again
            db().execute(
                "UPDATE outbox SET status = ?, error = ?, sent_ts = ?, error_ts = ? WHERE id = ?",
                (item["status"], item["error"], item["sent_ts"], item["error_ts"], item["id"]),
            )
        db().commit()  # answer 2xx only once the outcomes are stored: then they are ours
        return jsonify(ok=True, processed=len(items))

    @app.get("/outbox")
    def outbox_table():
        rows = db().execute("SELECT * FROM outbox ORDER BY created_at, id").fetchall()
        return jsonify([dict(row) for row in rows])

    @app.get("/outbox/<mail_id>")
    def outbox(mail_id: str):
        row = db().execute("SELECT * FROM outbox WHERE id = ?", (mail_id,)).fetchone()
        if row is None:
            abort(404)
        return dict(row)

    return app


if __name__ == "__main__":
    create_app().run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
