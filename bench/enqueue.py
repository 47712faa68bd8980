"""Enqueue cost over HTTP, against gunicorn started the way ``make run`` starts it.

gunicorn runs ``etc/gunicorn.conf.py`` with its 2 gevent workers (``web.front.ApiWorker``),
``synchronous=FULL``, a private var dir, an API token and a default ``[smtp]`` account (so
messages validate); no dispatcher runs, so the figures are the API's alone.  Clients use
keep-alive ``requests`` sessions.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from tests.support.procs import free_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
WARMUP = 200  # requests before measuring: imports, first connection, SQLite page cache
SINGLE_REQUESTS = 2000
BATCHES = 12
BATCH_SIZE = 1000
THREADS = 8
CONCURRENT_SECONDS = 5.0
TARGETS_MS = {"single_p50": 3.0, "single_p99": 15.0, "batch_1000_p50": 80.0}


@contextlib.contextmanager
def serve(var_dir: Path, **settings) -> Iterator[str]:
    """gunicorn as ``make run`` starts it, on a free port; yields its base URL, then stops it."""
    port = free_port()
    metrics_dir = var_dir / "metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCMAIL_")}
    env.update(
        ASYNCMAIL_VAR_DIR=str(var_dir),
        ASYNCMAIL_PORT=str(port),
        ASYNCMAIL_HOST="127.0.0.1",
        ASYNCMAIL_WORKERS="2",
        ASYNCMAIL_SYNCHRONOUS="FULL",
        ASYNCMAIL_API_TOKEN=TOKEN,
        ASYNCMAIL_SMTP_HOST="127.0.0.1",
        ASYNCMAIL_SMTP_PORT=str(free_port()),  # nobody sends: no dispatcher runs
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),  # as supervisord sets it
        **{"ASYNCMAIL_" + k.upper(): str(v) for k, v in settings.items()},
    )
    log = open(var_dir / "gunicorn.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "etc/gunicorn.conf.py", "web.wsgi:app"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with code {proc.returncode} at start")
        with contextlib.suppress(requests.RequestException):
            if requests.get(base + "/health", timeout=1).ok:
                return
        time.sleep(0.05)
    raise RuntimeError("gunicorn did not answer /health in time")


def message(message_id: str) -> dict:
    """A typical small transactional message."""
    return {
        "id": message_id,
        "from": "Shop <noreply@shop.example>",
        "to": ["customer@example.org"],
        "subject": "Your order has shipped",
        "body": "Hello,\n\nyour order is on its way.\n\nRegards\n" * 4,
        "priority": "high",
    }


def _session() -> requests.Session:
    session = requests.Session()
    session.headers["X-API-Token"] = TOKEN
    return session


def _post(session: requests.Session, url: str, messages: list[dict]) -> float:
    """Seconds one add-messages request took; raises unless every message was queued."""
    started = time.perf_counter()
    response = session.post(url, json={"messages": messages})
    elapsed = time.perf_counter() - started
    answer = response.json()
    if response.status_code != 200 or answer["queued"] != len(messages):
        raise RuntimeError(f"enqueue failed: {response.status_code} {answer}")
    return elapsed


def percentile(samples: list[float], fraction: float) -> float:
    """The sample below which ``fraction`` of the samples lie (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def single_samples(base: str, requests_n: int = SINGLE_REQUESTS) -> list[float]:
    """Seconds of each one-message request on one keep-alive connection, after a warm-up."""
    return [seconds for _began, seconds in timed_samples(base, requests_n)]


def timed_samples(base: str, requests_n: int = SINGLE_REQUESTS) -> list[tuple[float, float]]:
    """(epoch seconds it began, seconds it took) of each request of ``single_samples``."""
    url = base + "/commands/add-messages"
    samples = []
    with _session() as session:
        for i in range(WARMUP):
            _post(session, url, [message(f"warm-{i}")])
        for i in range(requests_n):
            began = time.time()
            samples.append((began, _post(session, url, [message(f"single-{i}")])))
    return samples


def measure_single(base: str) -> dict:
    """Latency of one-message requests on one keep-alive connection."""
    samples = single_samples(base)
    with _session() as session:
        probe = session.get(base + "/health")
    return {
        "requests": len(samples),
        # sync workers would close every connection; ours keep it open
        "server_keeps_connection_alive": probe.headers.get("Connection", "").lower() != "close",
        "p50_ms": _ms(percentile(samples, 0.50)),
        "p90_ms": _ms(percentile(samples, 0.90)),
        "p99_ms": _ms(percentile(samples, 0.99)),
        "max_ms": _ms(max(samples)),
    }


def measure_batches(base: str) -> dict:
    """Time of 1000-message requests."""
    url = base + "/commands/add-messages"
    with _session() as session:
        _post(session, url, [message(f"warm-batch-{i}") for i in range(BATCH_SIZE)])
        samples = [
            _post(session, url, [message(f"batch-{b}-{i}") for i in range(BATCH_SIZE)])
            for b in range(BATCHES)
        ]
    return {
        "batches": len(samples),
        "messages_per_batch": BATCH_SIZE,
        "p50_ms": _ms(statistics.median(samples)),
        "min_ms": _ms(min(samples)),
        "max_ms": _ms(max(samples)),
        "messages_per_second": round(BATCH_SIZE / statistics.median(samples)),
    }


def measure_concurrent(base: str) -> dict:
    """Requests/s of THREADS clients, each with its own connection, for CONCURRENT_SECONDS."""
    url = base + "/commands/add-messages"
    latencies: list[list[float]] = [[] for _ in range(THREADS)]
    errors: list[str] = []
    deadline = time.perf_counter() + CONCURRENT_SECONDS

    def client(n: int) -> None:
        with _session() as session:
            i = 0
            while time.perf_counter() < deadline:
                try:
                    latencies[n].append(_post(session, url, [message(f"conc-{n}-{i}")]))
                except (RuntimeError, requests.RequestException) as exc:
                    errors.append(str(exc))
                i += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    samples = [s for per_thread in latencies for s in per_thread]
    return {
        "client_threads": THREADS,
        "seconds": round(elapsed, 2),
        "requests": len(samples),
        "requests_per_second": round(len(samples) / elapsed, 1),
        "p50_ms": _ms(percentile(samples, 0.50)),
        "p99_ms": _ms(percentile(samples, 0.99)),
        "errors": len(errors),
    }


def run() -> dict:
    """Start gunicorn, measure single, batch and concurrent enqueue, stop it."""
    with tempfile.TemporaryDirectory(prefix="asyncmail-bench-") as tmp:
        var_dir = Path(tmp) / "var"
        with serve(var_dir) as base:
            single = measure_single(base)
            batch = measure_batches(base)
            concurrent = measure_concurrent(base)
    return {
        "server": "gunicorn etc/gunicorn.conf.py, 2 gevent workers, synchronous=FULL",
        "single_message": single,
        "batch_1000": batch,
        "concurrent": concurrent,
        "targets_ms": TARGETS_MS,
        "meets_targets": {
            "single_p50": single["p50_ms"] <= TARGETS_MS["single_p50"],
            "single_p99": single["p99_ms"] <= TARGETS_MS["single_p99"],
            "batch_1000_p50": batch["p50_ms"] <= TARGETS_MS["batch_1000_p50"],
        },
    }
