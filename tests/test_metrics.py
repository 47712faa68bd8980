"""Metrics: multiprocess merging, promtool-clean exposition, series per account, scrape auth."""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from common import metrics, store
from common.config import load_config
from common.enums import Outcome
from tests.support import litestream
from tests.support.factories import T0, Clock, account
from tests.support.procs import ROOT, service_env
from tests.support.prometheus import promtool
from web.app import create_app

ALERTS = ROOT / "etc" / "prometheus-alerts.yml"
DASHBOARD = ROOT / "etc" / "grafana-dashboard.json"

# Run in a fresh interpreter: PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client
# is imported, as supervisord's environment= does for the real programs.
TOUCH_EVERY_METRIC = """
import os, sys, time
from common import metrics
account = sys.argv[1]
for counter in (metrics.SENT, metrics.ERRORS, metrics.DEFERRED, metrics.RATE_LIMITED):
    counter.labels("default", account).inc()
metrics.ATTEMPTS.labels("default", account, "sent").inc()
metrics.SMTP_SEND_SECONDS.labels("default", account).observe(0.02)
metrics.ENQUEUE_TO_SENT_SECONDS.labels("default", account).observe(0.2)
metrics.REPORT_BATCHES.labels("default", "ok").inc()
metrics.REPORT_BATCHES.labels("default", "failed").inc()
metrics.REPORT_ITEMS.labels("default").inc(3)
metrics.REPORT_LAG_SECONDS.observe(0.04)
metrics.HTTP_REQUESTS.labels("/commands/add-messages", "200").inc()
metrics.HTTP_SECONDS.labels("/commands/add-messages").observe(0.003)
metrics.HEARTBEAT.labels(sys.argv[2]).set(float(sys.argv[3]))
metrics.BOUNCES.labels("default", account, "hard").inc()
metrics.BOUNCE_MAILS.labels("processed").inc()
metrics.BOUNCE_MAILBOX_FAILURES.inc()
metrics.SUPPRESSED_RECIPIENTS.labels("default", account).inc()
metrics.at_exit()
"""
RENDER = """
import sys
from common import metrics, store
from common.config import load_config
config = load_config()
conn = store.db.connect(config.database)
sys.stdout.write(metrics.render(lambda: conn, config).decode())
"""
SAMPLE_PROCESS = """
import sys
from common import metrics
metrics.ProcessSampler(sys.argv[1])()
if sys.argv[2] == "exit":
    metrics.at_exit()
"""


def python(script: str, env: dict, *args) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def multiprocess(var_dir, conn):
    """(env, render()) for processes sharing one PROMETHEUS_MULTIPROC_DIR, like the stack."""
    (var_dir / "metrics").mkdir()
    env = service_env(var_dir)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(var_dir / "metrics")
    return env, lambda: python(RENDER, env)


def samples(text: str) -> dict[str, float]:
    """{'name{labels}': value} of every sample line, the labels in name order."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            name, _, labels = key.partition("{")
            if labels:
                pairs = sorted(re.findall(r'\w+="[^"]*"', labels))
                key = name + "{" + ",".join(pairs) + "}"
            found[key] = float(value)
    return found


def metric_names(text: str) -> set[str]:
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def add_account(conn, account_id: str) -> None:
    store.accounts.upsert(
        conn, "default", {"id": account_id, "host": "127.0.0.1", "port": 25}, int(T0)
    )


def exposition_with_everything(multiprocess, conn) -> str:
    """Every series: counters touched, a process sampled, a message, a heartbeat, and the
    database replicated by a real Litestream (its lag and up gauges)."""
    env, render = multiprocess
    add_account(conn, "acc")
    python(TOUCH_EVERY_METRIC, env, "acc", "dispatcher-00", "100")
    python(SAMPLE_PROCESS, env, "dispatcher", "live")
    now = time.time()
    store.messages.enqueue(
        conn,
        "default",
        [store.messages.NewMessage("m1", None, 1, {"id": "m1"}, None, "<m1@x.example>")],
        now - 30,
    )
    store.heartbeats.beat(conn, "dispatcher-00", "dispatcher", 1, now)
    var_dir = Path(env["ASYNCMAIL_VAR_DIR"])
    env["ASYNCMAIL_REPLICA_URL"] = f"file://{var_dir.parent / 'replica'}"
    config = load_config(environ=env)
    replicating = litestream.start(config, var_dir.parent / "litestream.log")
    try:
        return render()
    finally:
        litestream.stop(replicating)


# -- exposition -------------------------------------------------------------------------------
def test_multiprocess_output_passes_promtool(multiprocess, conn):
    text = exposition_with_everything(multiprocess, conn)
    done = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def test_single_process_output_passes_promtool(make_config):
    client = create_app(make_config()).test_client()
    client.get("/health")
    text = client.get("/metrics").get_data(as_text=True)
    done = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def test_counters_of_every_process_are_summed(multiprocess, conn):
    env, render = multiprocess
    add_account(conn, "acc")
    python(TOUCH_EVERY_METRIC, env, "acc", "dispatcher-00", "100")
    python(TOUCH_EVERY_METRIC, env, "acc", "dispatcher-01", "200")
    values = samples(render())
    assert values['asyncmail_sent_total{account_id="acc",tenant_id="default"}'] == 2
    assert values['asyncmail_report_items_total{tenant_id="default"}'] == 6
    assert values['asyncmail_smtp_send_seconds_count{account_id="acc",tenant_id="default"}'] == 2


def test_heartbeat_gauge_keeps_the_latest_of_a_restarted_process(multiprocess):
    env, render = multiprocess
    python(TOUCH_EVERY_METRIC, env, "acc", "dispatcher-00", "100")
    python(TOUCH_EVERY_METRIC, env, "acc", "dispatcher-00", "250")  # same name, new pid
    name = 'asyncmail_process_heartbeat_timestamp_seconds{process="dispatcher-00"}'
    assert samples(render())[name] == 250


def test_queue_gauges_come_from_the_database(conn, config):
    store.messages.enqueue(
        conn,
        "default",
        [
            store.messages.NewMessage("a", None, 0, {"id": "a"}, None, "<a@x.example>"),
            store.messages.NewMessage("b", None, 3, {"id": "b"}, int(T0) + 3600, "<b@x.example>"),
        ],
        T0 - 60,
    )
    with store.db.write(conn):
        conn.execute(
            "UPDATE messages SET sent_ts = ?, outcome_at = ? WHERE id = 'a'", (int(T0), T0 - 5)
        )
    store.heartbeats.beat(conn, "reporter", "reporter", 7, T0 - 2)
    values = samples(metrics.render(lambda: conn, config, clock=Clock(T0)).decode())
    assert values["asyncmail_pending_messages"] == 1
    assert values['asyncmail_messages{status="sent"}'] == 1
    assert values['asyncmail_messages{status="deferred"}'] == 1
    assert values['asyncmail_pending_by_priority{priority="3"}'] == 1
    assert values["asyncmail_oldest_ready_age_seconds"] == 0
    # at the scrape's "now", T0: outcome 5 seconds ago, heartbeat 2 seconds ago
    assert values['asyncmail_oldest_unreported_age_seconds{tenant_id="default"}'] == 5
    assert values['asyncmail_heartbeat_age_seconds{kind="reporter",process="reporter"}'] == 2


def test_due_messages_count_ready_and_retrying_but_not_scheduled_ones(conn, config):
    add_account(conn, "acc")
    store.messages.enqueue(
        conn,
        "default",
        [
            store.messages.NewMessage("ready", "acc", 2, {"id": "ready"}, None, "<r@x.example>"),
            store.messages.NewMessage(
                "retrying", "acc", 2, {"id": "retrying"}, None, "<t@x.example>"
            ),
            store.messages.NewMessage(
                "tomorrow", None, 2, {"id": "tomorrow"}, int(T0) + 86400, "<w@x.example>"
            ),
        ],
        T0 - 60,
    )
    with store.db.write(conn):  # a failed attempt, retried in ten minutes
        conn.execute("UPDATE messages SET attempts = 1, ready_at = ? WHERE id = 'retrying'",
                     (T0 + 600,))  # fmt: skip
    values = samples(metrics.render(lambda: conn, config, clock=Clock(T0)).decode())
    assert values['asyncmail_due_messages{account_id="acc",tenant_id="default"}'] == 2
    assert values['asyncmail_due_messages{account_id="default",tenant_id="default"}'] == 0


def test_service_gauges_say_what_is_configured(make_config, conn):
    config = make_config(client_sync_url="http://127.0.0.1:9/reports")
    values = samples(metrics.render(lambda: conn, config).decode())
    assert values['asyncmail_reports_enabled{tenant_id="default"}'] == 1
    assert values["asyncmail_dispatching_enabled"] == 1
    assert values["asyncmail_database_bytes"] > 0 and "asyncmail_database_wal_bytes" in values
    store.settings.set_active(conn, False)
    values = samples(metrics.render(lambda: conn, make_config()).decode())
    assert values['asyncmail_reports_enabled{tenant_id="default"}'] == 0
    assert values["asyncmail_dispatching_enabled"] == 0
    (info,) = [key for key in values if key.startswith("asyncmail_build_info{")]
    assert f'python="{platform.python_version()}"' in info and 'version="' in info


# -- series of every account ------------------------------------------------------------------
def account_series(text: str, account_id: str) -> dict[str, float]:
    return {k: v for k, v in samples(text).items() if f'account_id="{account_id}"' in k}


def test_an_account_has_its_series_at_zero_before_its_first_event(multiprocess, conn):
    """A first burst is an increase from 0, which rate() sees; a series born at 300 is not."""
    env, render = multiprocess
    add_account(conn, "new")  # created by any process: here, as by the CLI
    series = account_series(render(), "new")
    for name in ("sent", "errors", "deferred", "rate_limited"):
        assert series[f'asyncmail_{name}_total{{account_id="new",tenant_id="default"}}'] == 0
    for outcome in Outcome:
        assert (
            series[
                f'asyncmail_attempts_total{{account_id="new",outcome="{outcome}",tenant_id="default"}}'
            ]
            == 0
        )
    assert series['asyncmail_smtp_send_seconds_count{account_id="new",tenant_id="default"}'] == 0
    assert (
        series['asyncmail_enqueue_to_sent_seconds_count{account_id="new",tenant_id="default"}'] == 0
    )
    assert series['asyncmail_due_messages{account_id="new",tenant_id="default"}'] == 0
    assert samples(render())['asyncmail_sent_total{account_id="default",tenant_id="default"}'] == 0


def test_a_deleted_account_loses_its_series(multiprocess, conn):
    env, render = multiprocess
    add_account(conn, "gone")
    python(TOUCH_EVERY_METRIC, env, "gone", "dispatcher-00", "100")  # it sent, in another process
    assert (
        account_series(render(), "gone")[
            'asyncmail_sent_total{account_id="gone",tenant_id="default"}'
        ]
        == 1
    )
    store.accounts.delete(conn, "default", "gone", purge=True, now=time.time())
    assert account_series(render(), "gone") == {}


def test_an_account_made_through_the_api_shows_at_once(make_config):
    client = create_app(make_config()).test_client()
    client.post("/account", json=account("fresh"))
    assert (
        'asyncmail_errors_total{account_id="fresh",tenant_id="default"} 0.0'
        in client.get("/metrics").text
    )
    client.delete("/account/fresh")
    assert 'account_id="fresh"' not in client.get("/metrics").text


# -- processes --------------------------------------------------------------------------------
def test_process_series_sum_the_live_processes_of_each_kind(multiprocess, conn):
    env, render = multiprocess
    python(SAMPLE_PROCESS, env, "dispatcher", "live")  # still counted: it never said it exited
    python(SAMPLE_PROCESS, env, "dispatcher", "live")
    python(SAMPLE_PROCESS, env, "dispatcher", "exit")  # gone: only its CPU time stays
    python(SAMPLE_PROCESS, env, "reporter", "live")
    values = samples(render())
    assert values['asyncmail_processes{kind="dispatcher"}'] == 2
    assert values['asyncmail_processes{kind="reporter"}'] == 1
    one = values['process_resident_memory_bytes{kind="reporter"}']
    assert 1e6 < one < values['process_resident_memory_bytes{kind="dispatcher"}']
    assert values['process_open_fds{kind="dispatcher"}'] >= 2 * 3  # stdin, stdout, stderr each
    assert values['process_cpu_seconds_total{kind="dispatcher"}'] > 0


def test_reference_names_are_exposed(multiprocess, conn):
    names = metric_names(exposition_with_everything(multiprocess, conn))
    for name in metrics.REFERENCE_NAMES:
        assert name in names


# -- scraping -------------------------------------------------------------------------------
def test_metrics_need_the_token(make_config):
    client = create_app(make_config(api_token="scrape-secret")).test_client()
    assert client.get("/metrics").status_code == 401
    answer = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert answer.status_code == 200 and answer.mimetype == "text/plain"
    assert b"asyncmail_pending_messages" in answer.data


def test_metrics_public_serves_without_token(make_config):
    client = create_app(make_config(api_token="scrape-secret", metrics_public=True)).test_client()
    assert client.get("/metrics").status_code == 200
    assert client.get("/status").status_code == 401


# -- alerts and dashboard -------------------------------------------------------------------
def _expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    alerts = yaml.safe_load(ALERTS.read_text())["groups"]
    return exprs + [rule["expr"] for group in alerts for rule in group["rules"]]


def test_every_metric_in_dashboard_and_alerts_exists(multiprocess, conn):
    exposed = metric_names(exposition_with_everything(multiprocess, conn))
    used = {name for expr in _expressions() for name in re.findall(r"\basyncmail_\w+", expr)}
    assert used and used <= exposed, sorted(used - exposed)


def test_suppression_list_size_and_bounce_series_exist_from_the_first_scrape(make_config, conn):
    store.suppressions.add(conn, "default", "a@example.org", "manual", None, None, time.time())
    store.suppressions.add(
        conn, "default", "b@example.org", "hard_bounce", "5.1.1", None, time.time()
    )
    client = create_app(make_config()).test_client()
    values = samples(client.get("/metrics").get_data(as_text=True))
    assert values['asyncmail_suppressed_addresses{reason="manual"}'] == 1
    assert values['asyncmail_suppressed_addresses{reason="hard_bounce"}'] == 1
    assert values['asyncmail_suppressed_addresses{reason="complaint"}'] == 0
    for kind in ("hard", "soft", "complaint"):  # counted by this test process's other tests
        assert (
            f'asyncmail_bounces_total{{account_id="default",kind="{kind}",tenant_id="default"}}'
            in values
        )
