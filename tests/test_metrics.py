"""Metrics: multiprocess merging, promtool-clean exposition, scrape auth, alerts and dashboard."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import metrics, store
from tests.support.factories import T0, Clock
from tests.support.procs import ROOT, service_env
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
    counter.labels(account).inc()
metrics.ATTEMPTS.labels(account, "sent").inc()
metrics.SMTP_SEND_SECONDS.labels(account).observe(0.02)
metrics.ENQUEUE_TO_SENT_SECONDS.labels(account).observe(0.2)
metrics.REPORT_BATCHES.labels("ok").inc()
metrics.REPORT_BATCHES.labels("failed").inc()
metrics.REPORT_ITEMS.inc(3)
metrics.REPORT_LAG_SECONDS.observe(0.04)
metrics.HTTP_REQUESTS.labels("/commands/add-messages", "200").inc()
metrics.HTTP_SECONDS.labels("/commands/add-messages").observe(0.003)
metrics.HEARTBEAT.labels(sys.argv[2]).set(float(sys.argv[3]))
metrics.at_exit()
"""
RENDER = """
import sys
from common import metrics, store
from common.config import load_config
config = load_config()
conn = store.db.connect(config.database)
sys.stdout.write(metrics.render(lambda: conn).decode())
"""


def promtool() -> str:
    """promtool's path; absent it fails the test under CI and skips it elsewhere."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing: apt-get install prometheus (.ci/run does it)")
        pytest.skip("promtool is missing (Debian package prometheus)")
    return path


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
    """{'name{labels}': value} of every sample line."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


def metric_names(text: str) -> set[str]:
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def exposition_with_everything(multiprocess, conn) -> str:
    env, render = multiprocess
    python(TOUCH_EVERY_METRIC, env, "acc", "dispatcher-00", "100")
    now = time.time()
    store.messages.enqueue(
        conn,
        [store.messages.NewMessage("m1", None, 1, {"id": "m1"}, None, "<m1@x.example>")],
        now - 30,
    )
    store.heartbeats.beat(conn, "dispatcher-00", "dispatcher", 1, now)
    return render()


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


def test_counters_of_every_process_are_summed(multiprocess):
    env, render = multiprocess
    python(TOUCH_EVERY_METRIC, env, "acc", "dispatcher-00", "100")
    python(TOUCH_EVERY_METRIC, env, "acc", "dispatcher-01", "200")
    values = samples(render())
    assert values['asyncmail_sent_total{account_id="acc"}'] == 2
    assert values["asyncmail_report_items_total"] == 6
    assert values['asyncmail_smtp_send_seconds_count{account_id="acc"}'] == 2


def test_heartbeat_gauge_keeps_the_latest_of_a_restarted_process(multiprocess):
    env, render = multiprocess
    python(TOUCH_EVERY_METRIC, env, "acc", "dispatcher-00", "100")
    python(TOUCH_EVERY_METRIC, env, "acc", "dispatcher-00", "250")  # same name, new pid
    name = 'asyncmail_process_heartbeat_timestamp_seconds{process="dispatcher-00"}'
    assert samples(render())[name] == 250


def test_queue_gauges_come_from_the_database(conn):
    store.messages.enqueue(
        conn,
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
    values = samples(metrics.render(lambda: conn, clock=Clock(T0)).decode())
    assert values["asyncmail_pending_messages"] == 1
    assert values['asyncmail_messages{status="sent"}'] == 1
    assert values['asyncmail_messages{status="deferred"}'] == 1
    assert values['asyncmail_pending_by_priority{priority="3"}'] == 1
    assert values["asyncmail_oldest_ready_age_seconds"] == 0
    # at the scrape's "now", T0: outcome 5 seconds ago, heartbeat 2 seconds ago
    assert values["asyncmail_oldest_unreported_age_seconds"] == 5
    assert values['asyncmail_heartbeat_age_seconds{kind="reporter",process="reporter"}'] == 2


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
RULE_TESTS = """
rule_files: [{alerts}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'asyncmail_oldest_ready_age_seconds{{job="asyncmail"}}'
        values: '700x30'
      - series: 'asyncmail_heartbeat_age_seconds{{kind="dispatcher",process="dispatcher-00"}}'
        values: '1x3 200x30'
      - series: 'asyncmail_heartbeat_age_seconds{{kind="reporter",process="reporter"}}'
        values: '1x40'
      - series: 'asyncmail_sent_total{{job="asyncmail",account_id="a"}}'
        values: '0+10x30'
      - series: 'asyncmail_errors_total{{job="asyncmail",account_id="a"}}'
        values: '0+10x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: AsyncMailDispatchersDown
        exp_alerts:
          - exp_labels: {{severity: critical}}
            exp_annotations:
              summary: "No dispatcher is alive: nothing is being sent"
              description: "Check `asyncmail ctl status` and var/log/dispatcher-*.log."
      - eval_time: 20m
        alertname: AsyncMailReporterDown
        exp_alerts: []
      - eval_time: 2m
        alertname: AsyncMailOldestReadyTooOld
        exp_alerts: []
      - eval_time: 30m
        alertname: AsyncMailErrorRatioHigh
        exp_alerts:
          - exp_labels: {{severity: warning}}
            exp_annotations:
              summary: "50% of messages fail permanently"
              description: "See `asyncmail messages list --status error` for the SMTP answers."
"""


def test_alert_rules_are_valid(tmp_path):
    done = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_fire_when_they_should(tmp_path):
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(RULE_TESTS.format(alerts=json.dumps(str(ALERTS))))
    done = subprocess.run(
        [promtool(), "test", "rules", str(tests)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += re.findall(r"expr: (.+(?:\n {12}.+)*)", ALERTS.read_text())
    return exprs


def test_dashboard_covers_the_operators_questions():
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("queue depth", "send rate", "errors", "deferrals", "latency", "report lag"):
        assert topic in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] and dashboard["schemaVersion"]
    assert any("histogram_quantile(0.99" in e for e in _expressions())


def test_every_metric_in_dashboard_and_alerts_exists(multiprocess, conn):
    exposed = metric_names(exposition_with_everything(multiprocess, conn))
    used = {name for expr in _expressions() for name in re.findall(r"\basyncmail_\w+", expr)}
    assert used and used <= exposed, sorted(used - exposed)


def test_alert_file_documents_bearer_scraping():
    assert "authorization" in Path(ALERTS).read_text()
