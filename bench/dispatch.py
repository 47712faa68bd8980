"""Dispatch throughput against a bare smtplib loop, and idle enqueue-to-accepted latency.

Throughput: MESSAGES are enqueued while the scheduler is suspended, two real
``python -m dispatcher`` processes (``synchronous=FULL``, as supervisord starts them) are
woken by ``activate``, and the rate is MESSAGES over the time from activation to the last
recorded outcome.  Raw: the very bytes the dispatcher would send (built by ``mime.build``)
go through ``smtplib.SMTP.sendmail`` from two processes, one connection each, to the same
sink.  ``efficiency`` = dispatch / raw.  The sink is Postfix's ``smtp-sink`` when installed,
else the aiosmtpd recording sink of ``tests.support.smtp``.

Latency: with the dispatchers idle, one message at a time is enqueued through
``common.intake.accept_batch`` (what the API calls) after a random 50-200 ms gap, and
measured until the aiosmtpd recording sink has received it (its own arrival timestamp).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import smtplib
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import intake, store, wakeup
from common.config import load_config
from common.models import Message
from dispatcher import mime
from tests.support import procs
from tests.support.procs import free_port
from tests.support.smtp import start_server

DISPATCHERS = 2
MESSAGES = 5000  # per round
ROUNDS = 3  # raw and dispatch alternate; the medians are reported (a shared host is noisy)
LATENCY_SAMPLES = 150
WARMUP = 10  # latency samples dropped: first connection, imports, page cache
TARGETS = {"efficiency": 0.75, "idle_p50_ms": 10.0, "idle_p99_ms": 30.0}


def _item(i: int, account_id: str, prefix: str = "b") -> dict:
    return {
        "id": f"{prefix}{i}", "account_id": account_id, "from": "Sender <sender@example.com>",
        "to": "rcpt@example.com", "subject": f"Bench message {i}",
        "body": f"Hello,\n\nthis is bench message {i}.\n" * 4,
    }  # fmt: skip


class Sink:
    """A loopback SMTP sink: smtp-sink when installed, else aiosmtpd."""

    def __init__(self):
        self.port = free_port()
        binary = shutil.which("smtp-sink") or shutil.which("smtp-sink", path="/usr/sbin")
        if binary:
            user = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root
            self.proc = subprocess.Popen(
                [binary, *user, f"127.0.0.1:{self.port}", "1000"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self.name, self.peer = "postfix smtp-sink", None
            procs.wait_for(self._listening, timeout=10, message="smtp-sink listening")
        else:
            self.peer = start_server(port=self.port)
            self.name, self.proc = "aiosmtpd", None

    def _listening(self) -> bool:
        try:
            smtplib.SMTP("127.0.0.1", self.port, timeout=1).quit()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the sink process or server."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.peer is not None:
            self.peer.stop()


def _raw_worker(port: int, messages: list[tuple[str, list[str], bytes]], start, done) -> None:
    smtp = smtplib.SMTP("127.0.0.1", port, "bench.local", timeout=30)
    smtp.ehlo()
    start.wait()
    for sender, recipients, data in messages:
        smtp.sendmail(sender, recipients, data)
    done.put(time.perf_counter())
    smtp.quit()


def raw_rate(port: int, items: list[dict]) -> float:
    """Messages per second of a bare smtplib loop over DISPATCHERS connections."""
    built = [
        mime.build(Message.model_validate(i), [], time.time(), f"<{i['id']}@bench.example>")
        for i in items
    ]
    envelopes = [(e.sender, e.recipients, e.data) for e in built]
    context = multiprocessing.get_context("fork")
    start, done = context.Event(), context.Queue()
    workers = [
        context.Process(target=_raw_worker, args=(port, envelopes[n::DISPATCHERS], start, done))
        for n in range(DISPATCHERS)
    ]
    for worker in workers:
        worker.start()
    time.sleep(0.5)  # every worker connected and waiting
    began = time.perf_counter()
    start.set()
    finished = max(done.get(timeout=300) for _ in workers)
    for worker in workers:
        worker.join()
    return len(items) / (finished - began)


def _service(root: Path):
    ini = root / "asyncmail.ini"
    ini.touch()
    var = root / "var"
    config = load_config(ini, environ={"ASYNCMAIL_VAR_DIR": str(var)})
    conn = store.db.connect(config.database, config.synchronous)
    env = procs.service_env(var, ini, batch_size_per_account=50)
    return config, conn, env


def dispatch_rate(config, conn, items: list[dict]) -> float:
    """Messages per second of DISPATCHERS real dispatcher processes."""
    store.settings.set_active(conn, False)
    for n in range(0, len(items), 1000):
        intake.accept_batch(conn, config, "default", items[n : n + 1000], time.time())
    procs.wait_for(
        lambda: len(store.heartbeats.list_all(conn, time.time())) >= DISPATCHERS,
        message="dispatchers",
    )
    began = time.time()
    store.settings.set_active(conn, True)
    wakeup.notify(config.run_dir, wakeup.DISPATCHER)
    count = "SELECT count(*) AS n FROM messages WHERE sent_ts IS NULL AND error_ts IS NULL"
    procs.wait_for(lambda: conn.execute(count).fetchone()["n"] == 0, timeout=600, interval=0.05)
    last = conn.execute("SELECT max(outcome_at) AS t FROM messages WHERE account_id = 'sink'")
    last = last.fetchone()["t"]
    errors = conn.execute("SELECT count(*) AS n FROM messages WHERE error_ts IS NOT NULL")
    if errors.fetchone()["n"]:
        raise RuntimeError("some bench messages failed; see the dispatcher logs")
    return len(items) / (last - began)


def idle_latency_ms(config, conn, peer) -> list[float]:
    """Enqueue-to-received, one message at a time after random idle gaps."""
    rng = random.Random(42)
    latencies = []
    for n in range(LATENCY_SAMPLES + WARMUP):
        time.sleep(rng.uniform(0.05, 0.2))
        began = time.time()
        intake.accept_batch(conn, config, "default", [_item(n, "idle", "lat")], began)
        procs.wait_for(lambda n=n: len(peer.received) > n, timeout=10, interval=0.0005)
        if n >= WARMUP:
            latencies.append((peer.received[n].ts - began) * 1000)
    return latencies


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def run() -> dict:
    """The dispatch figures of ``make bench``."""
    root = Path(tempfile.mkdtemp(prefix="asyncmail-bench-dispatch-"))
    sink, peer, running = Sink(), start_server(), []
    try:
        config, conn, env = _service(root)
        store.accounts.upsert(
            conn, "default", {"id": "sink", "host": "127.0.0.1", "port": sink.port}, 0
        )
        store.accounts.upsert(
            conn, "default", {"id": "idle", "host": peer.host, "port": peer.port}, 0
        )
        running = [procs.start("dispatcher", env, root / f"d{n}.log") for n in range(DISPATCHERS)]
        raws, ours = [], []
        for n in range(ROUNDS):
            items = [_item(i, "sink", f"r{n}-") for i in range(MESSAGES)]
            raws.append(raw_rate(sink.port, items))
            ours.append(dispatch_rate(config, conn, items))
        latencies = idle_latency_ms(config, conn, peer)
    finally:
        for proc in running:
            procs.stop(proc)
        sink.stop()
        peer.stop()
    shutil.rmtree(root, ignore_errors=True)
    return {
        "sink": sink.name,
        "dispatchers": DISPATCHERS,
        "messages_per_round": MESSAGES,
        "rounds": ROUNDS,
        "dispatch_msgs_per_s": round(statistics.median(ours), 1),
        "raw_smtplib_msgs_per_s": round(statistics.median(raws), 1),
        "efficiency": round(statistics.median(ours) / statistics.median(raws), 3),
        "dispatch_rounds": [round(r) for r in ours],
        "raw_rounds": [round(r) for r in raws],
        "idle_enqueue_to_accepted_p50_ms": round(_percentile(latencies, 0.50), 2),
        "idle_enqueue_to_accepted_p99_ms": round(_percentile(latencies, 0.99), 2),
        "latency_samples": len(latencies),
        "latency_sink": "aiosmtpd (arrival timestamp)",
        "synchronous": config.synchronous,
        "targets": TARGETS,
    }


if __name__ == "__main__":
    print(run())
