"""The asyncmail console script, run in-process against a real database in a temp var dir."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from email.message import EmailMessage

import pytest

from cli import main as cli
from cli import stack as cli_stack
from common import crypto, store, wakeup
from common.config import load_config


@pytest.fixture
def conn(run, var_dir):
    run("init")
    connection = store.db.connect(var_dir / "asyncmail.db")
    yield connection
    connection.close()


def send(run, message_id="m1", *extra):
    return run(
        "send",
        "--id",
        message_id,
        "--from",
        "a@example.org",
        "--to",
        "b@example.org",
        "--subject",
        "hello",
        "--body",
        "text",
        *extra,
    )


# -- set-up commands ----------------------------------------------------------------------------
def test_init_creates_private_dirs_and_database(run, var_dir):
    code, out, _ = run("init")
    assert code == 0 and "schema_version=" in out
    for name in ("run", "log", "ratelimit"):
        assert stat.S_IMODE((var_dir / name).stat().st_mode) == 0o700
    assert stat.S_IMODE((var_dir / "asyncmail.db").stat().st_mode) == 0o600


def test_init_leaves_metrics_alone(run, var_dir):
    (var_dir / "metrics").mkdir()
    (var_dir / "metrics" / "counter_1.db").write_bytes(b"x")
    assert run("init")[0] == 0
    assert (var_dir / "metrics" / "counter_1.db").exists()


def test_token_is_strong_and_fresh(run):
    first, second = run("token")[1].strip(), run("--json", "token")[1]
    assert len(first) >= 40
    assert json.loads(second)["token"] != first


def test_check_config_masks_secrets(run, monkeypatch):
    monkeypatch.setenv("ASYNCMAIL_API_TOKEN", "s3cret-token")
    code, out, _ = run("check-config", "--json")
    config = json.loads(out)["config"]
    assert (
        code == 0 and config["api_token"] == "(set)" and config["smtp_host"] == "smtp.example.org"
    )
    assert "s3cret-token" not in out


def test_bad_configuration_is_one_line_naming_the_key(run, monkeypatch):
    monkeypatch.setenv("ASYNCMAIL_DISPATCHERS", "zero")
    code, out, err = run("status")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "ASYNCMAIL_DISPATCHERS" in err


def test_missing_config_file_is_a_usage_error(var_dir, capsys):
    assert cli.main(["--config", str(var_dir / "nope.ini"), "status"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unreachable_database_exits_3(run, monkeypatch, var_dir):
    monkeypatch.setenv("ASYNCMAIL_DB_PATH", str(var_dir))  # a directory, not a database
    code, _, err = run("status")
    assert code == 3 and err.startswith("database error:")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["init"],
        ["check-config"],
        ["token"],
        ["accounts"],
        ["accounts", "add"],
        ["accounts", "list"],
        ["accounts", "show"],
        ["accounts", "delete"],
        ["send"],
        ["messages"],
        ["messages", "list"],
        ["messages", "show"],
        ["messages", "delete"],
        ["status"],
        ["run-now"],
        ["suspend"],
        ["activate"],
        ["cleanup"],
        ["supervisord"],
        ["shutdown"],
        ["ctl"],
    ],
)
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "usage: asyncmail" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["frobnicate"])
    assert exit_info.value.code == 2


# -- accounts -----------------------------------------------------------------------------------
def test_account_password_from_environment_is_sealed(run, conn, monkeypatch):
    monkeypatch.setenv("ASYNCMAIL_SECRET_KEY", "k" * 32)
    monkeypatch.setenv("SMTP_PW", "hunter2")
    code, out, _ = run(
        "accounts",
        "add",
        "acc1",
        "--host",
        "smtp.example.org",
        "--port",
        "587",
        "--starttls",
        "--user",
        "bob",
        "--password-env",
        "SMTP_PW",
        "--limit-per-minute",
        "10",
    )
    assert code == 0 and "hunter2" not in out
    stored = store.accounts.get(conn, "default", "acc1", with_password=True)["password"]
    assert stored.startswith(crypto.PREFIX)
    assert crypto.unseal(stored, "k" * 32) == "hunter2"
    code, out, _ = run("accounts", "list")
    assert code == 0 and "acc1" in out and "starttls" in out and "10/min" in out
    assert "hunter2" not in out and "password" not in out.lower()


def test_account_password_from_prompt(run, conn, monkeypatch):
    monkeypatch.setattr("getpass.getpass", lambda prompt: "typed-secret")
    args = ("accounts", "add", "acc2", "--host", "h.example.org", "--port", "25")
    assert run(*args, "--user", "u", "--password-prompt")[0] == 0
    assert (
        store.accounts.get(conn, "default", "acc2", with_password=True)["password"]
        == "typed-secret"
    )


def test_password_is_never_taken_from_argv(run):
    with pytest.raises(SystemExit) as exit_info:
        run("accounts", "add", "a", "--host", "h", "--port", "25", "--password", "x")
    assert exit_info.value.code == 2


def test_account_add_rejects_bad_values(run, conn, monkeypatch):
    assert run("accounts", "add", "a", "--host", "h", "--port", "70000")[0] == 2
    code, _, err = run(
        "accounts", "add", "a", "--host", "h", "--port", "25", "--password-env", "NOT_SET_ANYWHERE"
    )
    assert code == 2 and "NOT_SET_ANYWHERE" in err
    code, _, err = run(
        "accounts", "add", "a", "--host", "h", "--port", "465", "--use-tls", "--starttls"
    )
    assert code == 2 and "starttls" in err
    assert store.accounts.list_all(conn, "default") == []


def test_account_show_and_delete(run, conn):
    run("accounts", "add", "acc", "--host", "h.example.org", "--port", "25")
    code, out, _ = run("accounts", "show", "acc", "--json")
    assert code == 0 and json.loads(out)["account"]["host"] == "h.example.org"
    assert run("accounts", "show", "nope")[0] == 1
    send(run, "m1", "--account", "acc")
    code, _, err = run("accounts", "delete", "acc")
    assert code == 1 and "1 unsent" in err
    assert run("accounts", "delete", "acc", "--purge")[0] == 0
    assert run("accounts", "delete", "acc")[0] == 1
    assert store.messages.get(conn, "default", "m1", time.time()) is None


def test_account_recipients_per_transaction_and_delete_answer(run, conn):
    args = ("accounts", "add", "big", "--host", "h", "--port", "25")
    assert run(*args, "--max-recipients-per-transaction", "500")[0] == 0
    assert store.accounts.get(conn, "default", "big")["max_recipients_per_transaction"] == 500
    assert run(*args, "--max-recipients-per-transaction", "0")[0] == 2
    code, out, _ = run("accounts", "delete", "big", "--json")
    assert code == 0 and json.loads(out) == {"ok": True, "removed": "big", "purged_messages": 0,
                                             "in_flight": [], "awaiting_report": 0}  # fmt: skip


# -- send ---------------------------------------------------------------------------------------
def test_send_from_flags(run, conn, tmp_path):
    attachment = tmp_path / "report.pdf"
    attachment.write_bytes(b"%PDF-1.4")
    code, out, _ = send(
        run,
        "m1",
        "--cc",
        "c@example.org,d@example.org",
        "--header",
        "X-Campaign: spring",
        "--attach",
        str(attachment),
        "--priority",
        "high",
        "--html",
    )
    assert code == 0 and "queued 1" in out
    record = store.messages.get(conn, "default", "m1", time.time())
    message = record["message"]
    assert record["priority"] == 1 and message["content_type"] == "html"
    assert message["headers"] == {"X-Campaign": "spring"}
    assert message["attachments"][0]["filename"] == "report.pdf"
    assert message["attachments"][0]["mime_type"] == "application/pdf"


def test_send_rejects_invalid_message_with_reason(run, conn):
    code, out, _ = run(
        "send",
        "--id",
        "bad",
        "--from",
        "a@example.org",
        "--to",
        "not-an-address",
        "--subject",
        "s",
        "--body",
        "b",
    )
    assert code == 1 and "not-an-address" in out
    assert store.messages.get(conn, "default", "bad", time.time()) is None


def test_send_header_injection_is_rejected(run, conn):
    code, out, _ = send(run, "inj", "--header", "X-A: ok\r\nBcc: evil@example.org")
    assert code == 1 and "CR or LF" in out


def test_send_unknown_account(run, conn):
    code, out, _ = send(run, "m1", "--account", "ghost")
    assert code == 1 and "unknown account_id" in out


def test_send_json_file_batch(run, conn, tmp_path):
    good = {
        "id": "j1",
        "from": "a@example.org",
        "to": ["b@example.org"],
        "subject": "s",
        "body": "b",
    }
    path = tmp_path / "batch.json"
    path.write_text(json.dumps({"messages": [good, {"id": "j2"}], "default_priority": "low"}))
    code, out, _ = run("send", "--json", str(path), "--output-json")
    result = json.loads(out)
    assert code == 1 and result["queued"] == ["j1"]
    assert result["rejected"][0]["id"] == "j2" and "from" in result["rejected"][0]["reason"]
    assert store.messages.get(conn, "default", "j1", time.time())["priority"] == 3
    path.write_text(json.dumps([{**good, "id": "j3"}]))
    assert run("send", "--json", str(path))[0] == 0


def test_send_json_usage_errors(run, conn, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    code, _, err = run("send", "--json", str(path))
    assert code == 2 and "not valid JSON" in err
    assert run("send", "--json", str(tmp_path / "missing.json"))[0] == 2
    path.write_text("{}")
    assert run("send", "--json", str(path), "--subject", "x")[0] == 2


def _eml(with_id=True) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.org>"
    msg["To"] = "bob@example.org, carol@example.org"
    msg["Subject"] = "Quarterly report"
    msg["X-Campaign"] = "q3"
    if with_id:
        msg["Message-ID"] = "<q3-report@example.org>"
    msg.set_content("plain version")
    msg.add_alternative('<p>html version <img src="cid:logo"></p>', subtype="html")
    msg.get_payload()[1].add_related(b"\x89PNG", "image", "png", cid="<logo>", filename="l.png")
    msg.add_attachment(b"a,b\n1,2\n", maintype="text", subtype="csv", filename="data.csv")
    return bytes(msg)


def test_send_eml(run, conn, tmp_path):
    path = tmp_path / "mail.eml"
    path.write_bytes(_eml())
    code, out, _ = run("send", "--eml", str(path), "--priority", "immediate")
    assert code == 0, out
    record = store.messages.get(conn, "default", "q3-report@example.org", time.time())
    message = record["message"]
    assert record["priority"] == 0
    assert message["content_type"] == "html" and "html version" in message["body"]
    assert message["message_id"] == "<q3-report@example.org>"
    assert message["headers"] == {"X-Campaign": "q3"}
    parts = {a["filename"]: a for a in message["attachments"]}
    assert set(parts) == {"l.png", "data.csv"}
    assert parts["l.png"]["content_id"] == "logo"


def test_send_eml_needs_an_id(run, conn, tmp_path):
    path = tmp_path / "mail.eml"
    path.write_bytes(_eml(with_id=False))
    code, _, err = run("send", "--eml", str(path))
    assert code == 2 and "--id" in err
    assert run("send", "--eml", str(path), "--id", "given")[0] == 0
    assert run("send", "--eml", str(path), "--id", "x", "--subject", "s")[0] == 2


# -- messages -------------------------------------------------------------------------------
def test_messages_list_show_and_pages(run, conn):
    for n in range(3):
        send(run, f"m{n}")
    code, out, _ = run("messages", "list")
    assert code == 0 and all(f"m{n}" in out for n in range(3)) and "queued" in out
    page = json.loads(run("messages", "list", "--limit", "2", "--json")[1])
    assert [m["id"] for m in page["messages"]] == ["m0", "m1"]
    rest = run("messages", "list", "--limit", "2", "--cursor", str(page["next_cursor"]), "--json")[
        1
    ]
    assert [m["id"] for m in json.loads(rest)["messages"]] == ["m2"]
    assert json.loads(run("messages", "list", "--status", "sent", "--json")[1])["messages"] == []
    assert run("messages", "list", "--limit", "0")[0] == 2
    code, out, _ = run("messages", "show", "m1")
    assert code == 0 and "hello" in out and "queued" in out
    assert json.loads(run("messages", "show", "m1", "--json")[1])["attempt_log"] == []
    assert run("messages", "show", "zz")[0] == 1


def test_messages_delete(run, conn):
    send(run, "m1")
    send(run, "m2")
    assert run("messages", "delete", "m1")[0] == 0
    code, out, _ = run("messages", "delete", "m2", "zz", "--json")
    assert code == 1 and json.loads(out) == {
        "ok": True,
        "removed": 1,
        "not_found": ["zz"],
        "in_flight": [],
    }
    assert store.messages.status_counts(conn, time.time())["queued"] == 0


# -- scheduler --------------------------------------------------------------------------------
def test_status_shows_counts_and_heartbeats(run, conn):
    send(run, "m1", "--priority", "low")
    store.heartbeats.beat(conn, "dispatcher-00", "dispatcher", 123, time.time())
    data = json.loads(run("status", "--json")[1])
    assert data["active"] is True and data["counts"]["queued"] == 1
    assert data["pending_by_priority"]["3"] == 1
    assert data["processes"][0]["process"] == "dispatcher-00"
    code, out, _ = run("status")
    assert code == 0 and "dispatcher-00" in out


def test_suspend_and_activate_persist(run, conn):
    assert run("suspend")[0] == 0
    assert store.settings.is_active(conn, True) is False
    assert run("activate")[0] == 0
    assert store.settings.is_active(conn, False) is True


def test_run_now_wakes_sleepers(run, conn, var_dir):
    waiter = wakeup.Waiter(var_dir / "run", wakeup.DISPATCHER, "dispatcher-00")
    try:
        before = time.time()
        code, out, _ = run("run-now", "--json")
        after = time.time()
        assert code == 0 and json.loads(out)["woken"] == 1
        assert waiter.wait(1.0) is True
    finally:
        waiter.close()
    assert before <= float(store.settings.get(conn, "run_now_at")) <= after  # the command's time


def test_cleanup_removes_old_reported(run, conn):
    send(run, "old")
    send(run, "new")
    with store.db.write(conn):
        conn.execute(
            "UPDATE messages SET sent_ts = 1, reported_ts = ? WHERE id = 'old'",
            (time.time() - 7200,),
        )
        conn.execute(
            "UPDATE messages SET sent_ts = 1, reported_ts = ? WHERE id = 'new'", (time.time(),)
        )
    code, out, _ = run("cleanup", "--older-than", "3600", "--json")
    assert code == 0 and json.loads(out)["removed"] == 1
    assert store.messages.get(conn, "default", "new", time.time()) is not None
    assert run("cleanup", "--older-than", "-1")[0] == 2


def test_cleanup_with_retention_zero_says_it_kept_everything(run, conn, ini):
    ini.write_text(ini.read_text() + "[delivery]\ndelivery_report_retention_seconds = 0\n")
    send(run, "old")
    with store.db.write(conn):
        conn.execute("UPDATE messages SET sent_ts = 1, reported_ts = 1 WHERE id = 'old'")
    code, out, _ = run("cleanup")
    assert code == 0 and "keep forever" in out
    assert store.messages.get(conn, "default", "old", time.time()) is not None


# -- the launcher (process-free parts; tests/test_supervisord.py runs the real thing) ---------
def test_prepare_wipes_metrics_and_heartbeats(var_dir, ini):
    config = load_config(ini)
    (var_dir / "metrics").mkdir()
    (var_dir / "metrics" / "counter_999.db").write_bytes(b"stale")
    conn = store.db.connect(config.database)
    store.heartbeats.beat(conn, "dispatcher-07", "dispatcher", 1, time.time())
    cli_stack.prepare(config)
    assert list((var_dir / "metrics").iterdir()) == []
    assert stat.S_IMODE((var_dir / "metrics").stat().st_mode) == 0o700
    assert store.heartbeats.list_all(conn, time.time()) == []
    conn.close()


def test_stack_env_exports_what_supervisord_conf_expands(var_dir, ini):
    config = load_config(ini, environ={"ASYNCMAIL_VAR_DIR": str(var_dir)}, dispatchers=5)
    env = cli_stack.stack_env(config, {"PATH": "/usr/bin", "PROMETHEUS_MULTIPROC_DIR": "/x"})
    assert env["ASYNCMAIL_DISPATCHERS"] == "5" and env["ASYNCMAIL_VAR_DIR"] == str(var_dir)
    assert env["ASYNCMAIL_CONFIG"] == str(ini.resolve())
    assert env["PATH"].split(os.pathsep)[0] == str(cli_stack.BIN_DIR)
    assert "PROMETHEUS_MULTIPROC_DIR" not in env


def test_launcher_refuses_when_supervisord_runs(run, var_dir):
    run("init")
    (var_dir / "metrics").mkdir()
    (var_dir / "metrics" / "counter_1.db").write_bytes(b"live")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(var_dir / "run" / "supervisor.sock"))
        listener.listen()
        code, _, err = run("supervisord")
    assert code == 1 and "already runs" in err
    assert (var_dir / "metrics" / "counter_1.db").exists()


def test_launcher_stops_on_bad_configuration(run, monkeypatch):
    monkeypatch.setenv("ASYNCMAIL_DISPATCHERS", "0")
    code, _, err = run("supervisord")
    assert code == 2 and "ASYNCMAIL_DISPATCHERS" in err


def test_shutdown_when_nothing_runs(run):
    code, out, _ = run("shutdown")
    assert code == 0 and "not running" in out


def test_a_reader_that_leaves_early_gets_no_traceback(var_dir, ini, run):
    """`asyncmail status | head`: the pipe closes before the output is written."""
    run("init")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte
    asyncmail = os.path.join(os.path.dirname(sys.executable), "asyncmail")
    for argv in (["status"], ["status", "--json"]):
        done = subprocess.run(
            [asyncmail, "--config", str(ini), *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
        assert (done.returncode, done.stderr) == (cli.BROKEN_PIPE, "")
    os.close(write_end)
