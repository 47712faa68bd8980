"""What tenants cost (docs/tenants.md): enqueue and dispatch with 1 tenant and with 20, and one
tenant's outcome-to-report latency while another tenant's upstream is healthy, down, or
hanging.

Enqueue: gunicorn as ``make run`` starts it (``bench.enqueue.serve``); every request carries a
tenant's token (looked up by its hash), from 1 tenant or spread over 20.  Dispatch: two real
dispatcher processes send 5000 messages to a loopback sink, from 1 tenant with 20 accounts
or from 20 tenants with one account each (the same number of accounts and connections, so
only the tenants differ).  Reports: a real reporter process (one thread per tenant's
stream); outcomes of tenant B are committed one at a time and announced as a dispatcher
does, while tenant A's outcomes keep coming and A's upstream answers, refuses connections,
or holds every request without answering.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.dispatch import Sink
from bench.enqueue import TOKEN, message, percentile, serve
from common import store, wakeup
from common.config import load_config
from common.models import Account
from common.operations import save_account
from common.operations import tenants as tenant_ops
from common.tenants import NewTenant
from tests.support import procs
from tests.support.db import record_outcome
from tests.support.upstream import Upstream

TENANTS = 20
SINGLE_REQUESTS = 1500
THREADS = 8
CONCURRENT_SECONDS = 4.0
DISPATCHERS = 2
MESSAGES = 5000
ROUNDS = 3
REPORT_SAMPLES = 300
REPORT_GAP = 0.01  # seconds between B's outcomes
TARGETS = {"enqueue_and_dispatch_apart": 0.10, "report_p50_ratio": 2.0}


def _tenants_over_http(base: str, count: int) -> list[str]:
    """Create ``count`` tenants with an account each; their tokens."""
    admin = {"X-API-Token": TOKEN}
    tokens = []
    for n in range(count):
        made = requests.post(base + "/tenants", json={"id": f"t{n:02d}", "name": f"t{n:02d}"},
                             headers=admin, timeout=10)  # fmt: skip
        token = made.json()["token"]
        account = {"id": "main", "host": "127.0.0.1", "port": 9}  # nobody sends
        requests.post(base + "/account", json=account, headers={"X-API-Token": token}, timeout=10)
        tokens.append(token)
    return tokens


def _post(session: requests.Session, url: str, token: str, item: dict) -> float:
    started = time.perf_counter()
    answer = session.post(url, json={"messages": [item]}, headers={"X-API-Token": token})
    if answer.status_code != 200 or answer.json()["queued"] != 1:
        raise RuntimeError(f"enqueue failed: {answer.status_code} {answer.text[:200]}")
    return time.perf_counter() - started


def _enqueue(base: str, tokens: list[str]) -> dict:
    """Single-message latency and concurrent requests/s, the requests spread over tokens."""
    url = base + "/commands/add-messages"
    with requests.Session() as session:
        for n in range(200):  # warm-up
            _post(session, url, tokens[n % len(tokens)], {**message(f"w{n}"), "account_id": "main"})
        singles = [
            _post(session, url, tokens[n % len(tokens)], {**message(f"s{n}"), "account_id": "main"})
            for n in range(SINGLE_REQUESTS)
        ]
    done: list[int] = [0] * THREADS
    deadline = time.perf_counter() + CONCURRENT_SECONDS

    def client(k: int) -> None:
        with requests.Session() as own:
            while time.perf_counter() < deadline:
                item = {**message(f"c{k}-{done[k]}"), "account_id": "main"}
                _post(own, url, tokens[(k + done[k]) % len(tokens)], item)
                done[k] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "single_p50_ms": round(percentile(singles, 0.5) * 1000, 3),
        "single_p99_ms": round(percentile(singles, 0.99) * 1000, 3),
        "concurrent_requests_per_s": round(sum(done) / (time.perf_counter() - started), 1),
    }


def measure_enqueue() -> dict:
    """Enqueue figures with 1 tenant and with TENANTS (each in a fresh service)."""
    figures = {}
    for count in (1, TENANTS):
        with tempfile.TemporaryDirectory(prefix="bench-tenants-") as tmp:
            with serve(Path(tmp) / "var") as base:
                figures[f"{count}_tenants"] = _enqueue(base, _tenants_over_http(base, count))
    return figures


# -- dispatch -----------------------------------------------------------------------------------
def _dispatch_round(root: Path, sink_port: int, tenants: int, per_tenant_accounts: int) -> float:
    """Messages per second of DISPATCHERS processes over MESSAGES spread evenly."""
    ini = root / "asyncmail.ini"
    ini.touch()
    config = load_config(ini, environ={"ASYNCMAIL_VAR_DIR": str(root / "var")})
    conn = store.db.connect(config.database, config.synchronous)
    keys = []
    for t in range(tenants):
        tenant_ops.create(conn, config, NewTenant(id=f"t{t:02d}", name="t"), time.time())
        for a in range(per_tenant_accounts):
            account = Account(id=f"a{a:02d}", host="127.0.0.1", port=sink_port)
            save_account(conn, config, f"t{t:02d}", account, time.time())
            keys.append((f"t{t:02d}", f"a{a:02d}"))
    store.settings.set_active(conn, False)
    for n in range(MESSAGES):
        tenant, account = keys[n % len(keys)]
        item = {**message(f"d{n}"), "account_id": account}
        store.messages.enqueue(conn, tenant, [_new(item)], time.time())
    env = procs.service_env(root / "var", ini)
    running = [procs.start("dispatcher", env, root / f"d{n}.log") for n in range(DISPATCHERS)]
    try:
        procs.wait_for(lambda: len(store.heartbeats.list_all(conn, time.time())) >= DISPATCHERS)
        began = time.time()
        store.settings.set_active(conn, True)
        wakeup.notify(config.run_dir, wakeup.DISPATCHER)
        procs.wait_for(lambda: _unsent(conn) == 0, timeout=600, interval=0.05)
        last = conn.execute("SELECT max(outcome_at) AS t FROM messages").fetchone()["t"]
        return MESSAGES / (last - began)
    finally:
        for proc in running:
            procs.stop(proc)
        conn.close()


def _new(item: dict) -> store.messages.NewMessage:
    return store.messages.NewMessage(item["id"], item["account_id"], 1, item, None,
                                     f"<{item['id']}@bench.example>")  # fmt: skip


def _unsent(conn) -> int:
    counts = store.messages.status_counts(conn, time.time())
    return counts["queued"] + counts["deferred"] + counts["sending"]


def measure_dispatch() -> dict:
    """Dispatch rate with 1 tenant of TENANTS accounts and with TENANTS tenants of one."""
    sink = Sink()
    rates: dict[str, list[float]] = {"1_tenant": [], f"{TENANTS}_tenants": []}
    try:
        for _ in range(ROUNDS):  # alternating: a shared host drifts
            for name, shape in (("1_tenant", (1, TENANTS)), (f"{TENANTS}_tenants", (TENANTS, 1))):
                with tempfile.TemporaryDirectory(prefix="bench-tenants-") as tmp:
                    rates[name].append(_dispatch_round(Path(tmp), sink.port, *shape))
    finally:
        sink.stop()
    return {
        "sink": sink.name,
        "accounts": TENANTS,
        **{f"{k}_msgs_per_s": round(statistics.median(v), 1) for k, v in rates.items()},
        "rounds": {k: [round(r) for r in v] for k, v in rates.items()},
    }


# -- reports ------------------------------------------------------------------------------------
def _b_latencies(conn, config, up_b: Upstream, prefix: str) -> list[float]:
    """B's outcome-to-report latencies (ms) of REPORT_SAMPLES paced outcomes; A's go on."""
    up_b.clear()
    outcome_at: dict[str, float] = {}
    for n in range(REPORT_SAMPLES):
        now = time.time()
        record_outcome(conn, f"{prefix}-a{n}", now, tenant="a")
        record_outcome(conn, f"{prefix}-b{n}", now, tenant="b")
        outcome_at[f"{prefix}-b{n}"] = now
        wakeup.notify(config.run_dir, wakeup.REPORTER)
        time.sleep(REPORT_GAP)
    up_b.wait_for_items(REPORT_SAMPLES, timeout=60)
    return [
        (request.arrived_at - outcome_at[item["id"]]) * 1000
        for request in up_b.answered()
        for item in request.items
        if item["id"] in outcome_at
    ]


def measure_reports() -> dict:
    """B's report latency p50 while A's upstream is healthy, refusing, and hanging."""
    with tempfile.TemporaryDirectory(prefix="bench-tenants-") as tmp, Upstream() as up_a, \
            Upstream() as up_b:  # fmt: skip
        root = Path(tmp)
        (root / "asyncmail.ini").write_text("[delivery]\nclient_sync_idle_seconds = 0\n")
        config = load_config(
            root / "asyncmail.ini", environ={"ASYNCMAIL_VAR_DIR": str(root / "var")}
        )
        conn = store.db.connect(config.database, config.synchronous)
        for name, up in (("a", up_a), ("b", up_b)):
            new = NewTenant(id=name, name=name, client_sync_url=up.url)
            tenant_ops.create(conn, config, new, time.time())
        env = procs.service_env(root / "var", root / "asyncmail.ini")
        proc = procs.start("reporter", env, root / "reporter.log")
        try:
            procs.wait_for(lambda: any(wakeup.wake_dir(config.run_dir).glob("reporter-*.sock")))
            _b_latencies(conn, config, up_b, "warm")
            healthy = _b_latencies(conn, config, up_b, "healthy")
            up_a.down()
            down = _b_latencies(conn, config, up_b, "down")
            up_a.up()
            up_a.hang()
            hanging = _b_latencies(conn, config, up_b, "hanging")
            up_a.release()
        finally:
            procs.stop(proc)
            conn.close()
    p50 = {k: round(statistics.median(v), 2) for k, v in
           (("a_healthy", healthy), ("a_down", down), ("a_hanging", hanging))}  # fmt: skip
    return {
        "samples": REPORT_SAMPLES,
        **{f"b_p50_ms_with_{k}": v for k, v in p50.items()},
        "ratio_down": round(p50["a_down"] / p50["a_healthy"], 2),
        "ratio_hanging": round(p50["a_hanging"] / p50["a_healthy"], 2),
    }


def run() -> dict:
    """The tenants figures of ``make bench``."""
    enqueue = measure_enqueue()
    dispatch = measure_dispatch()
    reports = measure_reports()
    one, many = enqueue["1_tenants"], enqueue[f"{TENANTS}_tenants"]
    apart = {
        "enqueue_single_p50": _apart(one["single_p50_ms"], many["single_p50_ms"]),
        "enqueue_concurrent": _apart(
            one["concurrent_requests_per_s"], many["concurrent_requests_per_s"]
        ),  # fmt: skip
        "dispatch": _apart(
            dispatch["1_tenant_msgs_per_s"], dispatch[f"{TENANTS}_tenants_msgs_per_s"]
        ),  # fmt: skip
    }
    return {
        "enqueue": enqueue,
        "dispatch": dispatch,
        "reports": reports,
        "apart": apart,
        "targets": TARGETS,
        "targets_met": {
            "within_10_percent": all(
                v <= TARGETS["enqueue_and_dispatch_apart"] for v in apart.values()
            ),  # fmt: skip
            "report_p50_within_2x": max(reports["ratio_down"], reports["ratio_hanging"])
            <= TARGETS["report_p50_ratio"],
        },
    }


def _apart(a: float, b: float) -> float:
    """How far apart two figures are, relative to the larger."""
    return round(abs(a - b) / max(a, b), 3)
