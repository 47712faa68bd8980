"""The suppression list: managed through the API and the CLI (one operation each), consulted
and filled by the dispatcher at send time (``[delivery] suppression = on``), left alone while
it is off (the default: a drop-in install behaves as before)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cli import main as cli
from common import crypto, store
from common.enums import Outcome
from common.store.bounces import Event
from tests.support.db import attempts, enqueue, row
from tests.support.dispatchers import send_ready
from tests.support.factories import T0, message
from tests.support.procs import free_port
from tests.support.smtp import Behavior
from web.app import create_app

TOKEN = "t"
AUTH = {"X-API-Token": TOKEN}


# -- the API -----------------------------------------------------------------------------------
@pytest.fixture
def client(make_config):
    return create_app(make_config(api_token=TOKEN)).test_client()


def test_api_adds_lists_pages_and_removes(client):
    for address in ("Bob@Example.org", "ann@example.org", "cy@example.org"):
        answer = client.post("/suppressions", json={"address": address}, headers=AUTH)
        assert answer.status_code == 200
    assert answer.json["suppression"]["reason"] == "manual"
    again = client.post(
        "/suppressions", json={"address": "bob@example.org", "reason": "complaint"}, headers=AUTH
    )
    entry = again.json["suppression"]
    assert (entry["address"], entry["reason"], entry["count"]) == (
        "bob@example.org",
        "complaint",
        2,
    )
    first = client.get("/suppressions?limit=2", headers=AUTH).json
    assert [e["address"] for e in first["suppressions"]] == ["ann@example.org", "bob@example.org"]
    rest = client.get(f"/suppressions?cursor={first['next_cursor']}", headers=AUTH).json
    assert [e["address"] for e in rest["suppressions"]] == ["cy@example.org"]
    assert rest["next_cursor"] is None
    gone = client.delete("/suppressions/BOB@example.org", headers=AUTH)
    assert gone.json == {"ok": True, "removed": "bob@example.org"}
    missing = client.delete("/suppressions/bob@example.org", headers=AUTH)
    assert missing.status_code == 404 and "not on the suppression list" in missing.json["error"]


@pytest.mark.parametrize(
    "body, words",
    [({"address": "two@x.org, three@x.org"}, "not one email address"),
     ({"address": "nobody"}, "not one email address"), ({"address": 7}, "must be an email"),
     ({"address": "a@x.org", "reason": "bored"}, "'reason' must be one of"), ({}, "must be")],
)  # fmt: skip
def test_api_refuses_what_is_not_one_address_or_a_known_reason(client, body, words):
    answer = client.post("/suppressions", json=body, headers=AUTH)
    assert answer.status_code == 400 and words in answer.json["error"]


def test_the_list_needs_the_token(client):
    assert client.get("/suppressions").status_code == 401


# -- the CLI -----------------------------------------------------------------------------------
def test_cli_adds_lists_and_removes(var_dir, tmp_path, capsys, conn):
    ini = tmp_path / "asyncmail.ini"

    def run(*argv):
        code = cli.main(["--config", str(ini), *argv])
        return code, *capsys.readouterr()

    assert run("suppressions", "add", "Ann@Example.org", "--reason", "hard_bounce")[0] == 0
    code, out, _ = run("suppressions", "list")
    assert code == 0 and "ann@example.org" in out and "hard_bounce" in out
    code, out, _ = run("suppressions", "list", "--json")
    assert json.loads(out)["suppressions"][0]["address"] == "ann@example.org"
    assert run("suppressions", "add", "not an address")[0] == 2
    assert run("suppressions", "remove", "ann@example.org")[:2] == (
        0, "ann@example.org is sent to again\n",
    )  # fmt: skip
    code, _, err = run("suppressions", "remove", "ann@example.org")
    assert code == 1 and "asyncmail suppressions list" in err


def test_seal_password_prints_what_the_ini_file_may_hold(var_dir, tmp_path, capsys, monkeypatch):
    ini = tmp_path / "asyncmail.ini"
    ini.touch()
    monkeypatch.setenv("IMAP_PW", "hunter2")
    assert cli.main(["--config", str(ini), "seal-password", "--password-env", "IMAP_PW"]) == 2
    assert "ASYNCMAIL_SECRET_KEY is not set" in capsys.readouterr().err
    monkeypatch.setenv("ASYNCMAIL_SECRET_KEY", "k" * 32)
    assert cli.main(["--config", str(ini), "seal-password", "--password-env", "IMAP_PW"]) == 0
    sealed = capsys.readouterr().out.strip()
    assert sealed.startswith("enc:") and crypto.unseal(sealed, "k" * 32) == "hunter2"


# -- the dispatcher at send time -----------------------------------------------------------------
REFUSING = Behavior(rcpt={
    "gone@example.org": "550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown",
    "spam@example.org": "550 5.7.1 Refused by policy",
    "full@example.org": "452 4.2.2 Mailbox full",
    "plain@example.org": "550 No such user here",
})  # fmt: skip


@pytest.fixture
def sink(smtp_server):
    return smtp_server(behavior=REFUSING)


def test_off_by_default_nothing_is_screened_or_learnt(make_config, conn, sink):
    config = make_config(smtp_host=sink.host, smtp_port=sink.port)
    assert config.suppression is False
    store.suppressions.add(conn, "default", "rcpt@example.com", "manual", None, None, T0)
    send_ready(conn, config, message("m1"), message("m2", to="gone@example.org"))
    assert len(sink.received) == 1 and row(conn, "m1")["refused"] is None
    assert store.suppressions.get(conn, "default", "gone@example.org") is None


def test_a_dead_address_refusal_is_learnt_and_others_are_not(make_config, conn, sink):
    config = make_config(smtp_host=sink.host, smtp_port=sink.port, suppression=True)
    everyone = ["ok@example.org", "gone@example.org", "spam@example.org", "full@example.org",
                "plain@example.org"]  # fmt: skip
    send_ready(conn, config, message("m1", to=everyone))
    assert sink.received[0].recipients == ["ok@example.org"]
    entry = store.suppressions.get(conn, "default", "gone@example.org")
    assert (entry["reason"], entry["status"]) == ("hard_bounce", "550 5.1.1")
    assert "User unknown" in entry["diagnostic"]
    assert store.suppressions.counts(conn)["hard_bounce"] == 1  # 5.7.1, 4.2.2, no status: kept


def test_a_message_only_to_a_dead_address_teaches_it_too(make_config, conn, sink):
    config = make_config(smtp_host=sink.host, smtp_port=sink.port, suppression=True)
    send_ready(conn, config, message("m1", to="gone@example.org"))
    assert row(conn, "m1")["error_ts"] is not None
    assert store.suppressions.get(conn, "default", "gone@example.org") is not None


def test_suppressed_recipients_are_skipped_and_reported(make_config, conn, sink):
    config = make_config(smtp_host=sink.host, smtp_port=sink.port, suppression=True)
    store.suppressions.add(conn, "default", "Gone@Example.org", "manual", None, None, T0)
    send_ready(conn, config, message("m1", to=["gone@example.org", "ok@example.org"]))
    assert sink.received[0].recipients == ["ok@example.org"]
    assert json.loads(row(conn, "m1")["refused"]) == {"gone@example.org": [None, "suppressed"]}


def test_all_suppressed_ends_in_error_without_a_connection(make_config, conn):
    """Nobody listens on the port: any connection attempt would make it a retry instead."""
    config = make_config(smtp_host="127.0.0.1", smtp_port=free_port(), suppression=True)
    store.suppressions.add(conn, "default", "a@example.org", "complaint", None, None, T0)
    store.suppressions.add(conn, "default", "b@example.org", "manual", None, None, T0)
    send_ready(conn, config, message("m1", to="a@example.org", cc="B@example.org"))
    stored = row(conn, "m1")
    assert stored["error"] == "all recipients suppressed: B@example.org, a@example.org"
    assert json.loads(stored["refused"]) == {
        "B@example.org": [None, "suppressed"], "a@example.org": [None, "suppressed"],
    }  # fmt: skip
    assert stored["attempts"] == 0
    assert [a["outcome"] for a in attempts(conn, "m1")] == [Outcome.SUPPRESSED]
    assert not store.attempts.send_starts(
        conn, "default", None, T0 - 3600
    )  # no rate-limit slot taken


def test_messages_show_lists_the_bounces(var_dir, tmp_path, capsys, conn, config):
    enqueue(conn, dataclasses.replace(config, smtp_host="127.0.0.1"), message("m1"))
    event = Event("m1", "rcpt@example.com", "hard", "failed", "5.1.1", "smtp; 550 5.1.1 gone")
    store.bounces.record_mail(conn, "k", "processed", "rfc3464", [event], [], T0, "default")
    assert cli.main(["--config", str(tmp_path / "asyncmail.ini"), "messages", "show", "m1"]) == 0
    out = capsys.readouterr().out
    assert "bounces:" in out and "rcpt@example.com  hard" in out and "smtp; 550 5.1.1 gone" in out
