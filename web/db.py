"""The request's configuration and database connection (the Flask tutorial's ``db.py``).

A worker serves many requests at once (gunicorn's gevent worker), and an apsw connection
must not be used by two of them at a time: each request takes a connection from its
process's pool and gives it back when it ends.  Connections are opened lazily, after the
fork: an SQLite connection must never cross one.  They wait ``db_wait_seconds`` for a locked
database, then the request answers 503 (``web.errors``).
"""

from __future__ import annotations

import os

from flask import Flask, current_app, g

from common import store
from common.config import Config

POOL_KEEP = 8  # idle connections a process keeps; a burst opens more and closes them after

_pools: dict[tuple, list] = {}


def _pool(config: Config) -> list:
    """This process's idle connections opened with ``config``'s settings."""
    key = (os.getpid(), str(config.database), config.synchronous, config.db_wait_seconds)
    return _pools.setdefault(key, [])


def get_config() -> Config:
    """The configuration of the app serving the current request."""
    return current_app.config["ASYNCMAIL"]


def get_conn():
    """The current request's own database connection."""
    if "conn" not in g:
        config = get_config()
        pool = _pool(config)
        g.conn = pool.pop() if pool else store.db.open_database(config, config.db_wait_seconds)
    return g.conn


def _release(exc: BaseException | None = None) -> None:
    conn = g.pop("conn", None)
    if conn is None:
        return
    pool = _pool(get_config())
    if conn.in_transaction or len(pool) >= POOL_KEEP:
        conn.close()  # a transaction left open by a failure must not reach the next request
    else:
        pool.append(conn)


def close_idle() -> int:
    """Close this process's idle pooled connections (a test's databases are gone after it)."""
    closed = 0
    for pool in _pools.values():
        while pool:
            pool.pop().close()
            closed += 1
    return closed


def init_app(app: Flask) -> None:
    """Give every request's connection back when the request ends."""
    app.teardown_appcontext(_release)
