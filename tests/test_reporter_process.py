"""``python -m reporter`` as a real process: wake-ups, SIGTERM, SIGKILL, SIGHUP, a bad database."""

from __future__ import annotations

import signal
import time

import pytest

from common import store, wakeup
from tests.support import procs
from tests.support.db import record_outcome

pytestmark = pytest.mark.slow


@pytest.fixture
def ini(tmp_path):
    path = tmp_path / "service.ini"
    path.write_text("[delivery]\nclient_sync_idle_seconds = 0\n")
    return path


@pytest.fixture
def start_reporter(var_dir, ini, tmp_path):
    """start_reporter(**settings) -> a running ``python -m reporter``; stopped after the test."""
    started = []

    def start(**settings):
        env = procs.service_env(var_dir, ini, **settings)
        proc = procs.start("reporter", env, tmp_path / "reporter.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        procs.stop(proc, signal.SIGKILL)


def _outcomes(conn, config, ids) -> None:
    """Terminal outcomes recorded and announced the way a dispatcher does it."""
    for n, message_id in enumerate(ids):
        record_outcome(conn, message_id, time.time() + n * 1e-6)
    wakeup.notify(config.run_dir, wakeup.REPORTER)


def _listening(config) -> bool:
    return any(wakeup.wake_dir(config.run_dir).glob("reporter-*.sock"))


def test_wakes_on_outcome_heartbeats_and_exits_0_on_term(start_reporter, upstream, conn, config):
    proc = start_reporter(client_sync_url=upstream.url)
    procs.wait_for(lambda: _listening(config), message="reporter wake-up socket")

    _outcomes(conn, config, ["a", "b"])

    assert [i["id"] for i in upstream.wait_for_items(2)] == ["a", "b"]
    procs.wait_for(lambda: store.reports.unreported_count(conn) == 0)
    assert [b["kind"] for b in store.heartbeats.list_all(conn, time.time())] == ["reporter"]
    assert procs.stop(proc) == 0


def test_term_finishes_the_request_in_hand(start_reporter, upstream, conn, config):
    proc = start_reporter(client_sync_url=upstream.url)
    procs.wait_for(lambda: _listening(config), message="reporter wake-up socket")
    upstream.hang()
    _outcomes(conn, config, ["a"])
    upstream.wait_for_requests(1)

    proc.send_signal(signal.SIGTERM)
    procs.wait_for(
        lambda: procs.signal_delivered(proc.pid, signal.SIGTERM), message="TERM mid-request"
    )
    upstream.release(200)

    assert proc.wait(10) == 0
    assert store.reports.unreported_count(conn) == 0


def test_sigkill_between_post_and_commit_repeats_but_never_drops(
    start_reporter, upstream, conn, config
):
    first = start_reporter(client_sync_url=upstream.url)
    procs.wait_for(lambda: _listening(config), message="reporter wake-up socket")
    upstream.hang()  # the upstream has the body; the reporter never hears back
    _outcomes(conn, config, ["a", "b", "c"])
    held = upstream.wait_for_requests(1)[0]
    procs.stop(first, signal.SIGKILL)
    assert store.reports.unreported_count(conn) == 3

    upstream.release(200)
    start_reporter(client_sync_url=upstream.url)

    procs.wait_for(lambda: store.reports.unreported_count(conn) == 0, message="all reported")
    assert [i["id"] for i in held.items] == ["a", "b", "c"]
    assert [i["id"] for i in upstream.answered()[-1].items] == ["a", "b", "c"]


def test_sighup_rereads_the_configuration(start_reporter, upstream, conn, config, ini, tmp_path):
    proc = start_reporter()
    procs.wait_for(lambda: _listening(config), message="reporter wake-up socket")
    _outcomes(conn, config, ["a"])
    log = tmp_path / "reporter.log"
    procs.wait_for(lambda: "event=reporting_off" in log.read_text(), message="no upstream yet")
    assert upstream.requests == []

    ini.write_text(f"[client]\nclient_sync_url = {upstream.url}\n")
    proc.send_signal(signal.SIGHUP)
    wakeup.notify(config.run_dir, wakeup.REPORTER)

    assert [i["id"] for i in upstream.wait_for_items(1)] == ["a"]


def test_unopenable_database_is_one_line_and_a_nonzero_exit(start_reporter, var_dir, tmp_path):
    proc = start_reporter(db_path=var_dir)  # a directory is no database

    assert proc.wait(20) != 0
    log = (tmp_path / "reporter.log").read_text().strip().splitlines()
    assert len(log) == 1 and "event=database_unavailable" in log[0]
