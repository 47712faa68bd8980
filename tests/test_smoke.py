"""Cheap whole-project checks: the schema, the gunicorn entry point, the bench harness."""

from __future__ import annotations

import importlib
import json
import logging
import sys

from bench import __main__ as bench_main
from bench import replication as bench_replication
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


def test_bench_finds_litestreams_work_in_its_debug_log(tmp_path):
    log = tmp_path / "litestream.log"
    log.write_text(
        "time=2026-11-28T10:00:00.000Z level=DEBUG msg=sync txid=2\n"
        'time=2026-11-28T10:00:00.007Z level=DEBUG msg="db sync" status=ok\n'
        'time=2026-11-28T10:00:00.100Z level=INFO msg="replica sync" db=2\n'
        'time=2026-11-28T10:00:00.102Z level=INFO msg="ltx file uploaded" level=0\n'
        'time=2026-11-28T10:00:00.105Z level=INFO msg="ltx file uploaded" level=0\n'
        "time=2026-11-28T10:00:00.250Z level=DEBUG msg=sync txid=3\n"  # nothing new: no end
        "a line that is not Litestream's\n"
    )
    t0 = 1795860000.0  # 2026-11-28T10:00:00Z
    spans = bench_replication.litestream_work(log)
    assert [(round(a - t0, 3), round(b - t0, 3)) for a, b in spans] == [
        (0.0, 0.007),
        (0.1, 0.102),
        (0.1, 0.105),
    ]
    inside, near, outside = (t0 + 0.003, 0.001), (t0 + 0.1055, 0.001), (t0 + 0.2, 0.001)
    assert bench_replication._share_overlapping([inside, near, outside], spans) == 0.667
