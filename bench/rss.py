"""Peak resident memory of each process kind while the whole stack carries a load.

Starts the real supervisord stack (``asyncmail supervisord -n``) in a temporary var dir with
an aiosmtpd sink and a proxy_sync upstream, pushes ``MESSAGES`` messages through the API in
add-messages batches, waits until every one was sent and reported, then reads each process's
``VmHWM`` (the kernel's high-water mark of resident memory) from ``/proc/<pid>/status``.

The default tree is supervisord, the gunicorn master and its workers, the dispatchers and the
reporter.  ``rss_tree_total_mib`` adds their peaks: an upper bound, since pages the processes
share (the interpreter, shared libraries) count once per process.  ``pss_tree_total_mib``
adds their proportional set sizes at the end of the load (``/proc/<pid>/smaps_rollup``): a
shared page counts once across the tree, so this is what the tree holds in memory.
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
TARGETS_MIB = {"dispatcher": 35, "web_worker": 40, "reporter": 30, "rss_tree_total": 200}


def _kib(path: str, field: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in {path}")


def peak_rss_kib(pid: int) -> int:
    """VmHWM of a live process, in KiB."""
    return _kib(f"/proc/{pid}/status", "VmHWM")


def pss_kib(pid: int) -> int:
    """Proportional set size now (shared pages divided among their sharers), in KiB."""
    return _kib(f"/proc/{pid}/smaps_rollup", "Pss")


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


def _tree(stack: Stack) -> dict[str, list[int]]:
    """{kind: pids} of the default tree."""
    web = stack.program_pid("web")
    return {
        "supervisord": [stack.proc.pid],
        "web_master": [web],
        "web_worker": sorted(descendants(web)),
        "dispatcher": [stack.program_pid(f"dispatcher-{n:02d}") for n in range(DISPATCHERS)],
        "reporter": [stack.program_pid("reporter")],
    }


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


def _measure(stack: Stack) -> dict:
    tree = _tree(stack)
    pids = [pid for kind_pids in tree.values() for pid in kind_pids]
    peaks = {kind: _mib(max(map(peak_rss_kib, p))) for kind, p in tree.items()}
    total = _mib(sum(map(peak_rss_kib, pids)))
    measured = {**peaks, "rss_tree_total": total}
    return {
        "peak_rss_mib": peaks,
        "rss_tree_total_mib": total,
        "pss_tree_total_mib": _mib(sum(map(pss_kib, pids))),
        "tree_processes": len(pids),
        "targets_mib": TARGETS_MIB,
        "targets_met": {name: measured[name] <= mib for name, mib in TARGETS_MIB.items()},
    }


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
            figures = _measure(stack)
        finally:
            leftovers = stack.stop()
            sink.stop()
            upstream.down()
    return {
        **figures,
        "messages": MESSAGES,
        "enqueue_seconds": round(enqueue_seconds, 2),
        "processes_left_after_stop": len(leftovers),
    }
