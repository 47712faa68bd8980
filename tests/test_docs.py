"""Every command of README's walk-through and of docs/migration.md, run as a reader runs it.

The service comes from ``make run`` in this checkout (a fresh clone would download its
packages first; the target is the same), the SMTP server is aiosmtpd, the proxy_sync
upstream is real; only the ports and the example file paths are the test's own.
"""

from __future__ import annotations

import configparser
import json
import subprocess

import pytest

from common.config import REFERENCE_UNUSED, load_config
from tests.support.procs import ROOT, free_port, service_env, wait_for
from tests.support.reference import make_reference_db
from tests.support.stack import ASYNCMAIL
from tests.support.upstream import Upstream
from tests.support.walkthrough import Walkthrough, blocks, section

README = (ROOT / "README.md").read_text()
MIGRATION = (ROOT / "docs" / "migration.md").read_text()
TENANTS = (ROOT / "docs" / "tenants.md").read_text()
FIXTURE = ROOT / "tests" / "fixtures" / "reference-config.ini"
FIXTURE_TOKEN = "reference-api-token"
SYNC_PATH = "/email/mailproxy/mp_endpoint/proxy_sync"  # the reference's example upstream path
# every key the reference reads from its config.ini (its main.py, October 2025), by section
REFERENCE_KEYS = {
    "storage": {"db_path"},
    "server": {"host", "port", "api_token"},
    "client": {"client_sync_url", "client_sync_user", "client_sync_password", "client_sync_token"},
    "scheduler": {"active"},
    "delivery": {"send_interval_seconds", "test_mode", "default_priority",
                 "delivery_report_retention_seconds", "batch_size_per_account"},
    "logging": {"delivery_activity"},
    **REFERENCE_UNUSED,
}  # fmt: skip


def shell_env(tmp, settings: dict, **extra) -> dict:
    """A reader's shell: the service's settings (ASYNCMAIL_<KEY>) and other variables."""
    env = service_env(tmp / "var", None, dispatchers=1, **settings)
    env.update({k: str(v) for k, v in extra.items()})
    return env


# -- the reference config.ini fixture and the reference database ------------------------------
def test_fixture_has_every_section_and_key_the_reference_reads():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(FIXTURE)
    found = {name: set(parser.options(name)) for name in parser.sections()}
    assert found == REFERENCE_KEYS


def test_the_references_database_is_refused_with_one_line(tmp_path):
    old = make_reference_db(tmp_path / "mail_service.db", [], [])
    env = shell_env(tmp_path, {"db_path": old})
    done = subprocess.run(
        [ASYNCMAIL, "init"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 3 and done.stderr.count("\n") == 1, done.stderr
    assert f"{old} holds tables but no async-mail-service schema" in done.stderr
    assert "docs/migration.md" in done.stderr


def test_migration_ini_snippet_is_a_valid_configuration(tmp_path):
    [snippet] = blocks(MIGRATION, "ini")
    path = tmp_path / "snippet.ini"
    path.write_text(snippet)
    assert load_config(path, environ={}).report_format == "reports"


# -- README: five minutes ---------------------------------------------------------------------
@pytest.mark.slow
def test_readme_five_minutes_reach_a_delivered_message_and_its_report(tmp_path):
    service, servers, send, look = blocks(section(README, "## Five minutes"))
    api, smtp, app = free_port(), free_port(), free_port()
    env = shell_env(  # the documented ports are the defaults: these settings move them
        tmp_path, {"port": api}, PORT=app, MAIL_API_URL=f"http://127.0.0.1:{api}",
        OUTBOX_DB=tmp_path / "outbox.db",
    )  # fmt: skip
    doc = Walkthrough(tmp_path, env, ports={8000: api, 2525: smtp, 5000: app})
    try:
        doc.start_service(service, api)
        out = doc.run(
            [servers, send, look, "kill %1 %2\nwait || true"],  # the stop the text gives
            between={
                0: "wait_port 2525; wait_port 5000",
                1: "wait_output 'curl -s localhost:5000/outbox' '\"status\":\"sent\"'",
            },
        )
    finally:
        survivors = doc.stop_service()
    assert not survivors, survivors
    account, queued, seen, _ = out
    assert '"ok":true' in account
    # queued, or already sent: the report may reach the application before /send answers
    assert '"status":"queued"' in queued or '"status":"sent"' in queued
    assert seen.count('"status":"sent"') == 2  # the application's row and the service's record
    printed = "".join(out)  # aiosmtpd prints each message it receives as it arrives
    assert "Subject: Hello" in printed and "Message-ID: <" in printed


# -- docs/migration.md ------------------------------------------------------------------------
@pytest.mark.slow
def test_migration_guide_switches_a_reference_install_over(tmp_path, smtp_server):
    start, unauthorized, importer, check = blocks(MIGRATION)
    sink = smtp_server()
    old_db = make_reference_db(
        tmp_path / "old.db",
        accounts=[{"id": "main", "host": sink.host, "port": sink.port, "user": None,
                   "password": None, "use_tls": 0, "limit_behavior": "defer"}],
        messages=[
            {"payload": {"id": "old-1", "account_id": "main", "from": "ops@example.com",
                         "to": ["ann@example.org"], "subject": "Queued before the switch",
                         "body": "x", "content_type": "plain", "priority": 2}},
            {"payload": {"id": "old-2", "account_id": "main", "from": "ops@example.com",
                         "to": "bob@example.org", "subject": "sent", "body": "x"},
             "sent_ts": 1761300000},  # sent, never reported
            {"payload": {"id": "old-3", "account_id": "main", "from": "ops@example.com",
                         "to": "cy@example.org", "subject": "failed", "body": "x"},
             "error_ts": 1761300000, "error": "550 no such user", "reported_ts": 1761300001},
        ],
    )  # fmt: skip
    home = tmp_path / "home"
    home.mkdir()
    api = free_port()
    with Upstream(user="syncuser", password="syncpass", path=SYNC_PATH) as upstream:
        # the file's client_sync_url, on this test's port
        settings = {"port": api, "client_sync_url": upstream.url}
        env = shell_env(tmp_path, settings, HOME=home, API_TOKEN=FIXTURE_TOKEN)
        paths = {"/srv/mail/config.ini": FIXTURE, "/tmp/mail_service.db": old_db}
        doc = Walkthrough(tmp_path, env, ports={8000: api}, paths=paths)
        try:
            doc.start_service(start, api)
            status, imported, queued = doc.run([unauthorized, importer, check])
            delivered = wait_for(lambda: len(sink.received) >= 2 and sink.received, 30)
            items = upstream.wait_for(
                lambda up: (
                    {"old-1", "switch-check-1"} <= {i["id"] for i in up.items()} and up.items()
                )
            )
        finally:
            survivors = doc.stop_service()
    assert not survivors, survivors
    assert "syncuser" in doc.service_log()  # check-config printed the file's settings
    assert status.strip() == "401"
    assert "account main: saved" in imported and "messages: 1 of 1 queued" in imported
    assert "1 outcomes were never reported" in imported
    assert '"queued":1' in queued and '"id":"switch-check-1"' in queued
    subjects = sorted(r.message()["Subject"] for r in delivered)
    assert subjects == ["Queued before the switch", "Switched"]
    assert all(r.status == 200 for r in upstream.requests)  # the file's basic auth was used
    assert {i["status"] for i in items} == {"sent"}
    assert (home / "mail_service.db").exists()  # the file's db_path, ~ expanded


# -- docs/tenants.md --------------------------------------------------------------------------
@pytest.mark.slow
def test_tenants_walkthrough_two_tenants_with_curl(tmp_path):
    service, servers, create, setup, look, rotate = blocks(section(TENANTS, "## Two tenants"))
    api, smtp_a, smtp_b, app_a, app_b = (free_port() for _ in range(5))
    env = shell_env(tmp_path, {"port": api})
    ports = {8000: api, 2525: smtp_a, 2526: smtp_b, 9001: app_a, 9002: app_b}
    doc = Walkthrough(tmp_path, env, ports=ports)
    printed = tmp_path / "terminal-2.log"  # the report endpoints print into this terminal
    delivered = "\n".join(
        f"wait_output 'curl -s localhost:8000/messages/welcome-42 -H \"X-API-Token: ${var}\"' "
        f'\'"status":"sent"\'\nwait_output \'cat {printed}\' \'"tenant_id": "{tenant}"\''
        for var, tenant in (("ACME", "acme"), ("GLOBEX", "globex"))
    )
    try:
        doc.start_service(service, api)
        out = doc.run(
            [servers, create, setup, look, rotate, "kill %1 %2 %3 %4\nwait || true"],
            between={0: "wait_port 2525; wait_port 2526; wait_port 9001; wait_port 9002",
                     2: delivered},
        )  # fmt: skip
    finally:
        survivors = doc.stop_service()
    assert not survivors, survivors
    _, _, added, seen, rotated, _ = out
    assert added.count('"ok":true') == 4 and added.count('"queued":1') == 2
    own, foreign, code, tenant_route, code_too, status = seen.strip().splitlines()[-6:]
    assert '"subject":"Welcome to Acme"' in own and "Globex" not in own
    assert "cannot act in tenant 'acme'" in foreign and code.strip() == "403"
    assert "admin token" in tenant_route and code_too.strip() == "403"
    assert '"tenants":[' in status and '"id":"globex"' in status
    assert rotated.split() == ["401", "200"]
    everything = "".join(out)
    assert "Subject: Welcome to Acme" in everything and "Subject: Welcome to Globex" in everything
    reports = [line.split(" ", 1) for line in everything.splitlines() if line.startswith(
        (f"{app_a} ", f"{app_b} "))]  # fmt: skip
    by_port = {int(port): json.loads(item) for port, item in reports}
    assert by_port[app_a]["tenant_id"] == "acme" and by_port[app_b]["tenant_id"] == "globex"
    assert by_port[app_a]["id"] == by_port[app_b]["id"] == "welcome-42"
    assert by_port[app_a]["account_id"] == by_port[app_b]["account_id"] == "main"
