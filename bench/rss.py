"""Peak resident memory of each process kind while the whole stack carries a load.

Starts the real supervisord stack (``asyncmail supervisord -n``) in a temporary var dir with
an aiosmtpd sink and a proxy_sync upstream, pushes ``MESSAGES`` messages through the API in
add-messages batches, waits until every one was sent and reported, then reads each process's
``VmHWM`` (the kernel's high-water mark of resident memory) from ``/proc/<pid>/status``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import requests

from tests.support.procs import free_port, wait_for
from tests.support.smtp import start_server
from tests.support.stack import Stack, descendants
from tests.support.upstream import Upstream

MESSAGES = 5000  # enough for every process to reach its working size
BATCH = 500  # messages per add-messages request: a realistic bulk client
DISPATCHERS = 2


def peak_rss_kib(pid: int) -> int:
    """VmHWM of a live process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for pid {pid}")


def _load(stack: Stack) -> float:
    """Post every message; returns the seconds it took."""
    started = time.perf_counter()
    with requests.Session() as session:
        for first in range(0, MESSAGES, BATCH):
            batch = [
                {
                    "id": f"rss-{n}",
                    "from": "bench@example.org",
                    "to": "sink@example.org",
                    "subject": f"rss {n}",
                    "body": "x" * 2000,
                }
                for n in range(first, first + BATCH)
            ]
            answer = session.post(
                stack.url + "/commands/add-messages", json={"messages": batch}, timeout=60
            )
            answer.raise_for_status()
    return time.perf_counter() - started


def _measure(stack: Stack) -> dict:
    web = stack.program_pid("web")
    workers = sorted(descendants(web))
    dispatchers = [stack.program_pid(f"dispatcher-{n:02d}") for n in range(DISPATCHERS)]
    kib = {
        "web_master": peak_rss_kib(web),
        "web_worker": max(peak_rss_kib(p) for p in workers),
        "dispatcher": max(peak_rss_kib(p) for p in dispatchers),
        "reporter": peak_rss_kib(stack.program_pid("reporter")),
    }
    return {kind: round(value / 1024, 1) for kind, value in kib.items()}


def run() -> dict:
    """{'peak_rss_mib': {kind: MiB}, ...} measured under a full send-and-report load."""
    with tempfile.TemporaryDirectory(prefix="asyncmail-rss-") as tmp:
        var_dir = Path(tmp) / "var"
        var_dir.mkdir()
        sink, upstream = start_server("plain"), Upstream().up()
        stack = Stack(
            var_dir,
            port=free_port(),
            dispatchers=DISPATCHERS,
            smtp_host=sink.host,
            smtp_port=sink.port,
            client_sync_url=upstream.url,
            client_sync_idle_seconds=0,
        )
        try:
            stack.start(expect_running=("web", "reporter", "dispatcher-00", "dispatcher-01"))
            enqueue_seconds = _load(stack)
            wait_for(
                lambda: len(sink.received) >= MESSAGES,
                timeout=300,
                interval=0.2,
                message="every message at the sink",
            )
            upstream.wait_for_items(MESSAGES, timeout=120)
            peaks = _measure(stack)
        finally:
            leftovers = stack.stop()
            sink.stop()
            upstream.down()
    return {
        "peak_rss_mib": peaks,
        "messages": MESSAGES,
        "enqueue_seconds": round(enqueue_seconds, 2),
        "processes_left_after_stop": len(leftovers),
    }
