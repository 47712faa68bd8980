"""A normal client's enqueues while hostile clients hold connections open (slowloris).

Starts the real gunicorn (etc/gunicorn.conf.py) with a token, opens the connections of
``tests.support.slow.SlowClients`` (no token: slow headers, slow bodies, and bodies announced
but never sent), and meanwhile one authenticated client posts ``ENQUEUES`` single-message
batches on a keep-alive session.  Reports, per scenario, how many were answered 200 within
``CLIENT_TIMEOUT`` and how long the slowest took.  Target: all of them, the slowest within 1 s.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from tests.support.factories import message
from tests.support.slow import SlowClients, timed_posts
from tests.support.web import gunicorn_server

TOKEN = "bench-slow-token"
ENQUEUES = 20
CLIENT_TIMEOUT = 5.0  # seconds the normal client waits for one answer before giving up
SCENARIOS = {  # name: hostile connections by kind
    "none": {},
    "slow_20_header_20_body": {"header": 20, "body": 20},
    "stalled_4": {"stalled": 4},
    "slow_300": {"header": 150, "body": 100, "stalled": 50},
}
TARGET_SLOWEST_SECONDS = 1.0


def _scenario(port: int, base: str, name: str, hostile: dict) -> dict:
    bodies = [{"messages": [message(f"{name}-{n}")]} for n in range(ENQUEUES)]
    with SlowClients(port, interval=1.0, **hostile) as slow:
        seconds = timed_posts(
            base + "/commands/add-messages", bodies, {"X-API-Token": TOKEN}, CLIENT_TIMEOUT
        )
        still_open = slow.open_now()
    answered = [s for s in seconds if s is not None]
    return {
        "hostile_connections": sum(hostile.values()),
        "hostile_open_at_end": still_open,
        "answered_200": len(answered),
        "of": ENQUEUES,
        "p50_ms": round(statistics.median(answered) * 1000, 1) if answered else None,
        "slowest_ms": round(max(answered) * 1000, 1) if answered else None,
        "target_met": len(answered) == ENQUEUES and max(answered) <= TARGET_SLOWEST_SECONDS,
    }


def run() -> dict:
    """{scenario: figures} for each entry of SCENARIOS, against one gunicorn."""
    with tempfile.TemporaryDirectory(prefix="asyncmail-slow-") as tmp:
        var_dir = Path(tmp) / "var"
        var_dir.mkdir()
        with gunicorn_server(var_dir, api_token=TOKEN) as server:
            figures = {
                name: _scenario(server.port, server.base, name, hostile)
                for name, hostile in SCENARIOS.items()
            }
    return {**figures, "client_timeout_seconds": CLIENT_TIMEOUT}
