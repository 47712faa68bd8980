"""The Grafana dashboard: the operator's questions, per instance, and every expression (and
every alert) run by a real Prometheus scraping a running stack."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.support.procs import ROOT, free_port, wait_for
from tests.support.prometheus import Prometheus
from tests.support.stack import Stack

DASHBOARD = ROOT / "etc" / "grafana-dashboard.json"
ALERTS = ROOT / "etc" / "prometheus-alerts.yml"
INSTANCE = 'instance=~"$instance"'


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def expressions() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def alert_rules() -> list[dict]:
    return [rule for g in yaml.safe_load(ALERTS.read_text())["groups"] for rule in g["rules"]]


def test_dashboard_covers_the_operators_questions():
    titles = " ".join(p["title"].lower() for p in dashboard()["panels"])
    for topic in ("queue depth", "send rate", "errors", "deferrals", "latency", "report lag"):
        assert topic in titles
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids)) and dashboard()["uid"] and dashboard()["schemaVersion"]
    assert any("histogram_quantile(0.99" in e for e in expressions())


def test_every_panel_follows_the_instance_selector():
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["instance"]["includeAll"] and variables["instance"]["multi"]
    assert "__inputs" not in dashboard()  # the data source is the `datasource` variable
    for expr in expressions():
        selectors = re.findall(r"\b\w+\{([^}]*)\}", expr)
        assert selectors and all(INSTANCE in s for s in selectors), expr


TENANT = 'tenant_id=~"$tenant"'
PER_TENANT = re.compile(
    r"\b(asyncmail_(?:sent|errors|deferred|rate_limited|attempts|bounces|suppressed_recipients"
    r"|report_batches|report_items)_total|asyncmail_(?:smtp_send|enqueue_to_sent)_seconds_bucket"
    r"|asyncmail_due_messages|asyncmail_oldest_unreported_age_seconds|asyncmail_reports_enabled"
    r"|asyncmail_tenant_sending)"
    r"\{([^}]*)\}"
)


def test_per_account_and_per_tenant_panels_follow_the_tenant_selector():
    """Account ids are unique within a tenant only: every per-account series is picked by
    tenant too, and grouped by it (docs/tenants.md)."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["tenant"]["includeAll"] and variables["tenant"]["multi"]
    assert "tenant_id" in variables["tenant"]["definition"]
    found = 0
    for expr in expressions():
        for _, selector in PER_TENANT.findall(expr):
            assert TENANT in selector, expr
            found += 1
        assert "by (instance, account_id)" not in expr, expr
    assert found >= 20


def test_the_first_row_says_what_is_up_and_what_fires():
    panels = dashboard()["panels"]
    assert panels[0]["type"] == "row" and panels[0]["title"] == "Up and alerts"
    first_row = panels[1 : [p["type"] for p in panels].index("row", 1)]
    exprs = " ".join(t["expr"] for p in first_row for t in p["targets"])
    assert "up{" in exprs and "ALERTS{" in exprs and 'kind="dispatcher"' in exprs


def test_every_alert_has_its_metrics_on_the_dashboard():
    shown = " ".join(expressions())
    for rule in alert_rules():
        for metric in set(re.findall(r"\b(?:asyncmail_\w+|up)\b", rule["expr"])):
            assert metric in shown, (rule["alert"], metric)


@pytest.mark.slow
def test_every_expression_runs_on_prometheus_scraping_the_stack(var_dir, tmp_path):
    stack = Stack(var_dir, port=free_port(), dispatchers=1)
    (tmp_path / "prometheus").mkdir()
    prometheus = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{stack.port}", ALERTS)
    try:
        stack.start(expect_running=("web", "reporter", "dispatcher-00"))
        prometheus.start()
        scraped = 'count_over_time(up{job="asyncmail"}[1m]) >= 3'  # enough for rate()
        wait_for(
            lambda: prometheus.query(scraped)["data"]["result"],
            timeout=60,
            interval=0.5,
            message="three scrapes of the stack",
        )
        for expr in expressions():
            answer = prometheus.query(expr.replace("$instance", ".*"))
            assert answer["status"] == "success", (expr, answer)
        assert prometheus.query(expressions()[0].replace("$instance", ".*"))["data"]["result"]
        wait_for(
            lambda: all(r["lastEvaluation"] > "2000" for r in prometheus.rules()),
            timeout=30,
            message="every alert rule evaluated",
        )
        rules = prometheus.rules()
        assert len(rules) == len(alert_rules())
        failing = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        assert failing == []
        # a healthy idle stack: no alert even pending
        assert prometheus.query("ALERTS")["data"]["result"] == []
    finally:
        prometheus.stop()
        assert stack.stop() == set()
