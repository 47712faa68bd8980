"""Run every bench section and print one JSON document.

Each section is a module ``bench.<name>`` with ``run() -> dict``.  A section whose module is
absent is recorded as skipped; one that fails is recorded with its error, and the others
still run, so a single broken measurement never hides the rest.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import sys
import time
import traceback

SECTIONS = (
    "enqueue",
    "dispatch",
    "report",
    "scale",
    "rss",
    "replication",
    "slow_clients",
    "tenants",
)


def run_section(name: str) -> dict:
    """The figures of one section, or why there are none."""
    module_name = f"bench.{name}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name == module_name:
            return {"skipped": "module not present"}
        return {"error": f"cannot import {module_name}: {exc}"}
    started = time.perf_counter()
    try:
        figures = module.run()
    except Exception as exc:  # a failing section must not lose the others
        traceback.print_exc(file=sys.stderr)
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {**figures, "section_seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    """``python -m bench [section ...]``: all sections by default."""
    names = (argv if argv is not None else sys.argv[1:]) or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(
            f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}",
            file=sys.stderr,
        )
        return 2
    document = {
        "host": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": _cpu_count(),
        },
        "started_at": int(time.time()),
    }
    with _stdout_to_stderr():
        for name in names:
            print(f"bench: running {name}", file=sys.stderr, flush=True)
            document[name] = run_section(name)
    print(json.dumps(document, indent=2))
    return 0


@contextlib.contextmanager
def _stdout_to_stderr():
    """Whatever a section or its child processes print goes to stderr: stdout is the document."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    sys.exit(main())
