"""The alerting rules: valid, replayed against the failures they are for, each with a runbook."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.support.procs import ROOT
from tests.support.prometheus import promtool

ALERTS = ROOT / "etc" / "prometheus-alerts.yml"
ALERT_TESTS = ROOT / "tests" / "alerts_test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"


def rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def test_alert_rules_are_valid():
    done = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_alerts_fire_for_the_failures_they_are_for_and_only_those():
    """tests/alerts_test.yml: an SMTP outage, a first burst, web down, two hosts, ..."""
    done = subprocess.run(
        [promtool(), "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_seen_firing_in_a_replay():
    fired = {
        case["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == {rule["alert"] for rule in rules()}


def test_every_alert_has_a_runbook_section_it_links_to():
    anchors = {
        "#" + re.sub(r"[^a-z0-9-]", "", heading.lower())
        for heading in re.findall(r"^### (.+)$", OPERATIONS.read_text(), re.MULTILINE)
    }
    for rule in rules():
        link = f"docs/operations.md#{rule['alert'].lower()}"
        assert link in rule["annotations"]["description"], rule["alert"]
        assert link.removeprefix("docs/operations.md") in anchors, rule["alert"]


def test_every_alert_keeps_the_instance():
    """An aggregation that drops `instance` lets one host's outage hide behind another."""
    for rule in rules():
        for grouping in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", rule["expr"]):
            assert "instance" in grouping, (rule["alert"], grouping)
        assert "vector(" not in rule["expr"], rule["alert"]  # no data is not a zero


def test_alert_file_documents_bearer_scraping():
    assert "authorization" in ALERTS.read_text()
