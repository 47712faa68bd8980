"""Which processes make up the stack of a var dir: each records its pid in ``var/run/pids/``.

The launcher refuses to start a second stack while any of them lives, and ``asyncmail
shutdown`` stops them even when supervisord is gone (``kill -9`` leaves its programs running
under init).  A pid file can outlive its process and a pid can be reused, so a recorded
process counts only while its environment still carries ``STACK_ENV`` naming this var dir:
the launcher sets it for supervisord, and every program inherits it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

STACK_ENV = "ASYNCMAIL_STACK"
SUPERVISORD = "supervisord"  # supervisord writes its own pid file: run/supervisord.pid


def pid_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "pids"


def record(run_dir: Path, name: str) -> None:
    """Write this process's pid as ``name`` (replacing an older file of that name)."""
    directory = pid_dir(run_dir)
    directory.mkdir(parents=True, mode=0o700, exist_ok=True)
    temporary = directory / f".{name}.{os.getpid()}"
    temporary.write_text(f"{os.getpid()}\n")
    temporary.replace(directory / f"{name}.pid")


def forget(run_dir: Path, name: str, pid: int | None = None) -> None:
    """Remove the record ``name`` if it is of ``pid`` (default: this process)."""
    path = pid_dir(run_dir) / f"{name}.pid"
    if _read(path) == (os.getpid() if pid is None else pid):
        path.unlink(missing_ok=True)


def marker(var_dir: Path) -> str:
    """The value of ``STACK_ENV`` for the stack of ``var_dir``."""
    return str(Path(var_dir).resolve())


def _read(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip())
    return None


def belongs(pid: int, var_dir: Path) -> bool:
    """True while ``pid`` is a live process of the stack of ``var_dir``."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or another user's process: not ours either way
        return False
    return f"{STACK_ENV}={marker(var_dir)}".encode() in environ


def _age(path: Path) -> float:
    with contextlib.suppress(OSError):
        return path.stat().st_mtime
    return 0.0


def live(run_dir: Path, var_dir: Path) -> dict[str, int]:
    """{name: pid} of the recorded processes still running for ``var_dir``, oldest record first.

    Records of processes that are gone are removed on the way.
    """
    found: dict[str, int] = {}
    files = sorted(pid_dir(run_dir).glob("*.pid"), key=_age)
    for path in [Path(run_dir) / f"{SUPERVISORD}.pid", *files]:
        pid = _read(path)
        if pid is not None and pid != os.getpid() and belongs(pid, var_dir):
            found[path.stem] = pid
        elif path.parent == pid_dir(run_dir):
            path.unlink(missing_ok=True)
    return found
