"""The fixtures every test may take: a private var dir, its config, a migrated database."""

from __future__ import annotations

import os

import pytest

from common import store
from common.config import load_config
from web import db as web_db


@pytest.fixture
def var_dir(tmp_path, monkeypatch):
    """A fresh ASYNCMAIL_VAR_DIR; no ASYNCMAIL_* variable from the caller's shell leaks in."""
    for name in list(os.environ):
        if name.startswith("ASYNCMAIL_") or name == "PROMETHEUS_MULTIPROC_DIR":
            monkeypatch.delenv(name)
    path = tmp_path / "var"
    path.mkdir()
    monkeypatch.setenv("ASYNCMAIL_VAR_DIR", str(path))
    yield path
    web_db.close_pools()  # the API's pooled connections to this test's database


@pytest.fixture
def make_config(var_dir, tmp_path):
    """make_config(**overrides) -> Config rooted in the test's var dir (empty INI file)."""
    ini = tmp_path / "asyncmail.ini"
    ini.touch()

    def make(**overrides):
        return load_config(ini, environ={"ASYNCMAIL_VAR_DIR": str(var_dir)}, **overrides)

    return make


@pytest.fixture
def config(make_config):
    """The default configuration in the test's var dir."""
    return make_config()


@pytest.fixture
def conn(config):
    """A connection to the test's database, migrated; closed after the test."""
    connection = store.db.connect(config.database, config.synchronous)
    yield connection
    connection.close()
