"""The supervisord process tree: ``asyncmail supervisord|ctl|reload|shutdown``.

The launcher is the only place that prepares ``var/`` for a run.  Before supervisord starts
(and only then, when no program can be writing) it wipes ``var/metrics`` and forgets old
heartbeats; then it execs supervisord with the environment ``etc/supervisord.conf`` expands:
``ASYNCMAIL_VAR_DIR``, ``ASYNCMAIL_DISPATCHERS`` (the ``dispatchers`` key),
``ASYNCMAIL_BOUNCERS`` (1 with a bounce mailbox, else 0) and a ``PATH`` that finds this
virtualenv's ``gunicorn`` and ``python``.

One stack per var dir: every process of a stack records its pid (``common.pids``), so a
start refuses while any process of an earlier one lives (a ``kill -9`` of supervisord leaves
its programs running), and ``shutdown`` stops those leftovers too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from cli import replication
from cli.output import OK, UNAVAILABLE, CliError, emit
from common import pids, store
from common.config import Config

ROOT = Path(__file__).resolve().parent.parent
SUPERVISORD_CONF = ROOT / "etc" / "supervisord.conf"
BIN_DIR = Path(sys.executable).parent  # the virtualenv's bin/, not the resolved interpreter
# seconds: above the sum of every program's stopwaitsecs (30 + 150 + 60 + 60 + 40 with
# replication), since supervisord stops one program group at a time, waiting for each
SHUTDOWN_TIMEOUT = 360
# the programs that re-read the configuration on SIGHUP (gunicorn; common/process.py).  Not
# Litestream: it exits on SIGHUP, without its last upload, and its configuration is written
# by the launcher at start, so [replication] changes take a restart of the stack.
RELOADING = ("web", "dispatcher:*", "reporter")


def socket_path(config: Config) -> Path:
    return config.run_dir / "supervisor.sock"


def pid_path(config: Config) -> Path:
    return config.run_dir / "supervisord.pid"


def supervisord_answers(config: Config) -> bool:
    """True when a supervisord is listening on this var dir's control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(socket_path(config)))
        except OSError:
            return False
    return True


def prepare(config: Config) -> None:
    """Directories (0700), migrations, an empty metrics dir, no stale heartbeats or sockets,
    Litestream's program when replication is on."""
    for directory in (config.var_dir, config.run_dir, config.log_dir, config.ratelimit_dir):
        directory.mkdir(parents=True, mode=0o700, exist_ok=True)
    shutil.rmtree(config.metrics_dir, ignore_errors=True)
    config.metrics_dir.mkdir(mode=0o700)
    shutil.rmtree(config.run_dir / "wake", ignore_errors=True)
    conn = store.db.connect(config.database, config.synchronous)
    store.heartbeats.clear(conn)
    conn.close()
    replication.install(config)  # Litestream's program, or none (cli/replication.py)


def stack_env(config: Config, environ) -> dict:
    """The environment supervisord (and so every program) runs with."""
    env = dict(environ)
    env["ASYNCMAIL_VAR_DIR"] = str(config.var_dir)
    env[pids.STACK_ENV] = pids.marker(config.var_dir)  # marks every process of this stack
    env["ASYNCMAIL_DISPATCHERS"] = str(config.dispatchers)
    env["ASYNCMAIL_BOUNCERS"] = "1" if config.bounces_enabled else "0"
    if config.config_path is not None:  # programs read the same file the launcher checked
        env["ASYNCMAIL_CONFIG"] = str(Path(config.config_path).resolve())
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # supervisord.conf sets it for the programs
    return env


def cmd_supervisord(config: Config, args) -> int:
    """Prepare var/ and exec supervisord (-n: in the foreground; Ctrl-C stops everything)."""
    if supervisord_answers(config):
        raise CliError(
            f"supervisord already runs for {config.var_dir} (stop it first: make stop)", 1
        )
    leftovers = pids.live(config.run_dir, config.var_dir)
    if leftovers:
        raise CliError(
            f"processes of an earlier start still run for {config.var_dir}: "
            f"{_named(leftovers)}; stop them first: make stop (asyncmail shutdown)",
            1,
        )
    prepare(config)
    argv = [str(BIN_DIR / "supervisord"), "-c", str(SUPERVISORD_CONF)]
    if args.foreground:
        argv.append("-n")
    if os.geteuid() == 0:  # root on purpose (a container): say so, or supervisord logs CRIT
        argv += ["--user", "root"]
    sys.stdout.flush()
    os.umask(0o077)  # logs, database, ledger: owner only (supervisord.conf repeats it for -d)
    os.execve(argv[0], argv, stack_env(config, os.environ))
    return OK  # not reached: execve replaces this process


def cmd_ctl(config: Config, args) -> int:
    """Run supervisorctl against this var dir's supervisord (e.g. ``ctl status``)."""
    argv = [str(BIN_DIR / "supervisorctl"), "-c", str(SUPERVISORD_CONF), *args.ctl_args]
    sys.stdout.flush()
    os.execve(argv[0], argv, stack_env(config, os.environ))
    return OK  # not reached


def reload_targets(config: Config) -> list[str]:
    """The supervisord names ``reload`` sends SIGHUP to (the bouncer only when it runs)."""
    return [*RELOADING, *(["bouncer:*"] if config.bounces_enabled else [])]


def cmd_reload(config: Config, args) -> int:
    """Make every process re-read the configuration (SIGHUP); Litestream keeps running."""
    args.ctl_args = ["signal", "HUP", *reload_targets(config)]
    return cmd_ctl(config, args)


def _supervisord_pid(config: Config) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(pid_path(config).read_text().strip())
    return None


def supervisord_runs(config: Config) -> bool:
    """True when this var dir's supervisord answers on its socket or its pid is alive."""
    pid = _supervisord_pid(config)
    return supervisord_answers(config) or (pid is not None and pid_alive(pid))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _named(processes: dict[str, int]) -> str:
    return ", ".join(f"{name} (pid {pid})" for name, pid in processes.items())


def _stop_supervisord(config: Config, deadline: float) -> int | None:
    """TERM supervisord, which stops each program with its stopsignal; its pid, or None."""
    pid = _supervisord_pid(config)
    if pid is None or not pid_alive(pid) or not supervisord_answers(config):
        return None
    os.kill(pid, signal.SIGTERM)
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise CliError(f"supervisord (pid {pid}) still runs after the timeout", UNAVAILABLE)
        time.sleep(0.1)
    return pid


def _stop_leftovers(config: Config, deadline: float) -> dict[str, int]:
    """TERM what still runs of this var dir's stack (each stops gracefully); wait for it."""
    leftovers = pids.live(config.run_dir, config.var_dir)
    for pid in leftovers.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    while remaining := pids.live(config.run_dir, config.var_dir):
        if time.monotonic() > deadline:
            raise CliError(f"still running after the timeout: {_named(remaining)}", UNAVAILABLE)
        time.sleep(0.1)
    return leftovers


def cmd_shutdown(config: Config, args) -> int:
    """Stop every program gracefully, then supervisord, then any leftover of an earlier start.

    Returns once nothing of this var dir's stack runs.
    """
    deadline = time.monotonic() + args.timeout
    pid = _stop_supervisord(config, deadline)
    leftovers = _stop_leftovers(config, deadline)
    lines = [f"stopped supervisord (pid {pid})"] if pid else []
    if leftovers:
        lines.append(f"stopped leftovers of an earlier start: {_named(leftovers)}")
    answer = {"ok": True, "running": False, "pid": pid, "leftovers": leftovers}
    emit(args, answer, "\n".join(lines) or "supervisord is not running")
    return OK
