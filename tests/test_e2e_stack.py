"""End to end: the real supervisord stack, an aiosmtpd sink and a proxy_sync upstream.

Mail flows through the API while an operator drives supervisorctl (stop and start the
dispatchers, HUP everything, restart web); in the end every message arrived exactly once at
the sink, was reported exactly once upstream, /metrics adds up, and nothing is left running.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import subprocess
import threading
import time

import pytest
import requests

from tests.support.factories import message
from tests.support.procs import ROOT, free_port, wait_for
from tests.support.stack import ASYNCMAIL, Stack, descendants
from tests.support.upstream import Upstream

pytestmark = pytest.mark.slow

API_TOKEN = "e2e-api-token"
SYNC_TOKEN = "e2e-sync-token"
BATCH = 10  # messages per add-messages request of the background sender
PAUSE = 0.1  # between batches: ~100 messages/s, a steady flow a loaded CI host can drain
FINAL_WAIT = 90  # seconds for the sink and upstream to see everything (generous for CI)
PROGRAMS = ("web", "reporter", "dispatcher-00", "dispatcher-01")


class Sender(threading.Thread):
    """Posts batches until stopped; retries a batch through web restarts until accepted."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.accepted, self.errors = url, [], 0
        self.bad_answers: list[int] = []  # any HTTP answer but 200/400 means a dropped request
        self.halt = threading.Event()

    def post(self, session: requests.Session, batch: list[dict]) -> None:
        while True:
            try:
                answer = session.post(
                    self.url + "/commands/add-messages",
                    json={"messages": batch},
                    timeout=10,
                    headers={"X-API-Token": API_TOKEN},
                )
                if answer.status_code in (200, 400):  # 400: all rejected, see below
                    # a retried batch whose first try was stored: its ids are taken already
                    taken = {"already sent", "in flight"}
                    refused = [r for r in answer.json()["rejected"] if r["reason"] not in taken]
                    assert not refused, refused
                    self.accepted += [m["id"] for m in batch]
                    return
                self.bad_answers.append(answer.status_code)
            except requests.ConnectionError:
                pass  # web is restarting: the same batch again is safe (ids are idempotent)
            self.errors += 1
            time.sleep(0.05)

    def run(self) -> None:
        with requests.Session() as session:
            n = 0
            while not self.halt.is_set():
                self.post(session, [message(f"flow-{n + i:05d}") for i in range(BATCH)])
                n += BATCH
                time.sleep(PAUSE)


@pytest.fixture
def sink(smtp_server):
    return smtp_server()


@pytest.fixture
def upstream():
    with Upstream(token=SYNC_TOKEN) as up:
        yield up


@pytest.fixture
def ini(tmp_path):
    """The configuration file; operate() edits it before HUP to prove it is re-read."""
    path = tmp_path / "asyncmail.ini"
    path.write_text("[logging]\ndelivery_activity = false\n")
    return path


@pytest.fixture
def stack(var_dir, ini, sink, upstream):
    running = Stack(
        var_dir,
        ini,
        port=free_port(),
        dispatchers=2,
        api_token=API_TOKEN,
        smtp_host=sink.host,
        smtp_port=sink.port,
        client_sync_url=upstream.url,
        client_sync_token=SYNC_TOKEN,
        client_sync_idle_seconds=0,
    )
    yield running.start(expect_running=PROGRAMS)
    running.stop(signal.SIGKILL)


def api(stack: Stack, path: str, method: str = "get", **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    return requests.request(method, stack.url + path, headers=headers, timeout=10, **kwargs)


def sent_total(metrics_text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("asyncmail_sent_total{")
    )


def activity_logged(var_dir) -> bool:
    """Both kinds of process write delivery-activity lines (only with delivery_activity)."""
    logs = var_dir / "log"
    dispatched = any("event=attempt" in p.read_text() for p in logs.glob("dispatcher-*.log"))
    return dispatched and "event=report_posted" in (logs / "reporter.log").read_text()


def reloaded(var_dir) -> bool:
    """Every dispatcher and the reporter logged that SIGHUP made them re-read the file."""
    logs = [var_dir / "log" / f"{name}.log" for name in PROGRAMS if name != "web"]
    return all("event=reloaded" in path.read_text() for path in logs)


def operate(stack: Stack, ini, sender: Sender) -> None:
    """What an operator does while mail flows; each step must lose and duplicate nothing."""
    stack.ctl("stop", "dispatcher:*", check=True)
    assert {stack.status()[n] for n in ("dispatcher-00", "dispatcher-01")} == {"STOPPED"}
    accepted = len(sender.accepted)  # mail keeps being accepted while no dispatcher runs
    wait_for(lambda: len(sender.accepted) > accepted, message="a batch taken, none sending")
    stack.ctl("start", "dispatcher:*", check=True)
    before = {name: stack.program_pid(name) for name in PROGRAMS}
    workers = descendants(before["web"])
    assert not activity_logged(stack.var_dir)
    ini.write_text("[logging]\ndelivery_activity = true\n")
    stack.run("reload", check=True)  # make reload
    wait_for(lambda: activity_logged(stack.var_dir), message="configuration re-read on HUP")
    wait_for(lambda: not workers & descendants(before["web"]), message="web workers replaced")
    wait_for(lambda: reloaded(stack.var_dir), message="every worker process reloaded")
    after = {name: stack.program_pid(name) for name in PROGRAMS}
    assert after == before  # HUP reloads in place: no process died of it
    stack.ctl("restart", "web", check=True)
    assert stack.status()["web"] == "RUNNING"


def test_mail_flows_through_operations_without_loss_or_duplicates(
    stack, ini, sink, upstream, var_dir
):
    status = api(stack, "/status").json()
    assert status["ok"] and status["active"] and status["test_mode"] is False
    assert set(status["counts"]) == {"queued", "deferred", "sending", "sent", "error"}
    assert "oldest_ready_age_seconds" in status and len(status["pending_by_priority"]) == 4
    processes = {p["process"]: p for p in status["processes"]}
    assert {"dispatcher-00", "dispatcher-01", "reporter"} <= set(processes)
    # alive: every heartbeat was written since the stack started (not a timing measurement)
    assert all(p["ts"] >= int(stack.started_at) for p in processes.values())

    cli = subprocess.run(
        [ASYNCMAIL, "accounts", "add", "second", "--host", sink.host, "--port", str(sink.port)],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cli.returncode == 0, cli.stderr
    sender = Sender(stack.url)
    sender.start()
    try:
        wait_for(lambda: len(sink.received) >= 20, message="first messages at the sink")
        operate(stack, ini, sender)
        answer = api(
            stack,
            "/commands/add-messages",
            "post",
            json={"messages": [message(f"acct-{n}", "second") for n in range(20)]},
        )
        assert answer.status_code == 200 and answer.json()["queued"] == 20
    finally:
        sender.halt.set()
        sender.join(30)
    assert sender.bad_answers == []  # restarts refuse connections at worst, never fail one
    expected = set(sender.accepted) | {f"acct-{n}" for n in range(20)}

    wait_for(
        lambda: set(sink.subjects()) >= expected,
        timeout=FINAL_WAIT,
        interval=0.1,
        message="every message at the sink",
    )
    upstream.wait_for(lambda up: {i["id"] for i in up.items()} >= expected, timeout=FINAL_WAIT)
    arrivals = collections.Counter(sink.subjects())
    assert [s for s, n in arrivals.items() if n > 1] == []
    reports = collections.Counter(i["id"] for i in upstream.items())
    assert [i for i, n in reports.items() if n > 1] == []
    assert {i["status"] for i in upstream.items()} == {"sent"}

    text = api(stack, "/metrics").text
    assert sent_total(text) == len(arrivals)
    assert 'asyncmail_http_requests_total{code="200",route="/commands/add-messages"}' in text
    if shutil.which("promtool"):
        check = subprocess.run(
            ["promtool", "check", "metrics"], input=text, text=True, capture_output=True, timeout=30
        )
        assert check.returncode == 0 and check.stdout + check.stderr == ""
    counts = api(stack, "/status").json()["counts"]
    assert counts["sent"] == len(expected) and counts["queued"] == counts["sending"] == 0

    assert stack.stop(signal.SIGTERM) == set()
    with contextlib.suppress(FileNotFoundError):
        assert not (var_dir / "run" / "supervisor.sock").exists()
