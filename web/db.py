"""The request's configuration and database connection (the Flask tutorial's ``db.py``).

A connection is opened lazily, once per process: gunicorn forks its workers after loading
the app, and an SQLite connection must never cross a fork.
"""

from __future__ import annotations

import os

from flask import current_app

from common import store
from common.config import Config

_connections: dict[tuple[int, str], object] = {}


def connection(config: Config):
    """This process's database connection, opened after fork on first use."""
    key = (os.getpid(), str(config.database))
    if key not in _connections:
        _connections[key] = store.db.open_database(config)
    return _connections[key]


def get_config() -> Config:
    """The configuration of the app serving the current request."""
    return current_app.config["ASYNCMAIL"]


def get_conn():
    """The database connection for the current request."""
    return connection(get_config())
