"""Move SMTP accounts and unsent messages from a gnr-async-mail-service database.

Stop the old service first (so it sends nothing more), start this one on its own db_path,
then:

    python3 examples/import_reference.py /tmp/mail_service.db \
        --url http://127.0.0.1:8000 --token "$API_TOKEN"

Accounts are posted with their passwords (the old database kept them in clear; with
ASYNCMAIL_SECRET_KEY set this service stores them encrypted).  Messages neither sent nor
failed are queued again under their ids, each validated as any new message is; the ones
refused are listed with the reason.  Outcomes the old service never reported are counted:
your application has not heard of them.  Running it twice is harmless (ids are idempotent).
Standard library only, so the system python3 runs it.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import urllib.error
import urllib.request

ACCOUNT_FIELDS = ("id", "host", "port", "user", "password", "ttl", "limit_per_minute",
                  "limit_per_hour", "limit_per_day", "limit_behavior", "use_tls",
                  "batch_size")  # fmt: skip
BATCH = 1000  # the most messages one add-messages request may carry


def post(url: str, token: str | None, path: str, body: dict) -> tuple[int, dict]:
    """POST JSON; (HTTP status, JSON answer), error statuses included."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-API-Token"] = token
    request = urllib.request.Request(url + path, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as refused:
        return refused.code, json.load(refused)


def old_accounts(db: sqlite3.Connection) -> list[dict]:
    """The old accounts as POST /account bodies (its 0/1 use_tls as a boolean)."""
    rows = db.execute(f"SELECT {', '.join(ACCOUNT_FIELDS)} FROM accounts ORDER BY id")
    accounts = []
    for row in rows:
        account = {k: v for k, v in zip(ACCOUNT_FIELDS, row, strict=True) if v is not None}
        if "use_tls" in account:
            account["use_tls"] = bool(account["use_tls"])
        accounts.append(account)
    return accounts


def old_pending(db: sqlite3.Connection) -> list[dict]:
    """Payloads of messages neither sent nor failed, in the old service's sending order."""
    rows = db.execute(
        "SELECT payload FROM messages WHERE sent_ts IS NULL AND error_ts IS NULL "
        "ORDER BY priority, created_at, id"
    )
    return [json.loads(payload) for (payload,) in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("database", help="the old service's db_path")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="this service's API")
    parser.add_argument("--token", help="this service's [server] api_token")
    args = parser.parse_args(argv)
    db = sqlite3.connect(f"file:{args.database}?mode=ro", uri=True)
    failed = 0
    for account in old_accounts(db):
        status, answer = post(args.url, args.token, "/account", account)
        print(f"account {account['id']}: {'saved' if answer.get('ok') else answer.get('error')}")
        failed += not answer.get("ok")
    pending = old_pending(db)
    for start in range(0, len(pending), BATCH):
        batch = pending[start : start + BATCH]
        status, answer = post(args.url, args.token, "/commands/add-messages", {"messages": batch})
        if "rejected" not in answer:
            sys.exit(f"add-messages: HTTP {status}: {answer.get('error')}")
        for item in answer["rejected"]:
            print(f"message {item['id']}: refused: {item['reason']}")
        print(f"messages: {answer.get('queued', 0)} of {len(batch)} queued")
        failed += len(answer["rejected"])
    (unreported,) = db.execute(
        "SELECT count(*) FROM messages WHERE reported_ts IS NULL "
        "AND (sent_ts IS NOT NULL OR error_ts IS NOT NULL)"
    ).fetchone()
    if unreported:
        print(f"{unreported} outcomes were never reported by the old service; "
              "see its GET /messages (sent_ts, error_ts) for them")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
