"""Cheap whole-project checks: the schema, the gunicorn entry point, the bench harness."""

from __future__ import annotations

import importlib
import json
import logging
import sys

from bench import __main__ as bench_main
from common import store


def test_schema_is_current(conn):
    assert store.db.schema_version(conn) == store.db.SCHEMA_VERSION


def test_wsgi_entry_point_builds_an_authenticating_app(var_dir, monkeypatch):
    monkeypatch.setenv("ASYNCMAIL_API_TOKEN", "tok")
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # wsgi configures logging
    monkeypatch.setattr(root, "level", root.level)
    sys.modules.pop("web.wsgi", None)
    wsgi = importlib.import_module("web.wsgi")
    client = wsgi.app.test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/status").status_code == 401
    assert client.get("/status", headers={"X-API-Token": "tok"}).status_code == 200
    sys.modules.pop("web.wsgi", None)


def test_bench_records_a_missing_section_as_skipped():
    assert bench_main.run_section("no_such_section") == {"skipped": "module not present"}


def test_bench_records_a_failing_section_and_keeps_the_others(monkeypatch, capsys):
    def boom():
        raise RuntimeError("sink unreachable")

    monkeypatch.setattr(bench_main, "SECTIONS", ("enqueue", "broken"))
    monkeypatch.setitem(sys.modules, "bench.broken", type(sys)("bench.broken"))
    sys.modules["bench.broken"].run = boom
    monkeypatch.setitem(sys.modules, "bench.enqueue", type(sys)("bench.enqueue"))
    sys.modules["bench.enqueue"].run = lambda: print("noise") or {"p50_ms": 1.0}
    assert bench_main.main([]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["broken"] == {"error": "RuntimeError: sink unreachable"}
    assert document["enqueue"]["p50_ms"] == 1.0


def test_bench_refuses_unknown_section_names(capsys):
    assert bench_main.main(["nonsense"]) == 2
