"""How ``asyncmail`` answers: aligned tables for people, JSON (``--json``) for scripts."""

from __future__ import annotations

import json
import sys
import time

# Exit codes every subcommand uses.
OK = 0
REFUSED = 1  # not found, rejected, refused while in use
UNHEALTHY = 1  # asyncmail status: a process's heartbeat is stale
USAGE = 2  # bad arguments or configuration (argparse uses 2 as well)
UNAVAILABLE = 3  # the database or supervisord cannot be reached
BROKEN_PIPE = 141  # stdout's reader went away (`| head`): as if killed by SIGPIPE, like cat


class CliError(Exception):
    """A failure the operator can act on: one line on stderr and an exit code."""

    def __init__(self, message: str, code: int = USAGE):
        super().__init__(message)
        self.code = code


def when(ts) -> str:
    """Epoch seconds as local time, or '-'."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def table(rows: list[dict], columns: list[str]) -> str:
    """Rows as left-aligned columns under an upper-case header."""
    cells = [[("-" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def pairs(values: dict) -> str:
    """key: value lines, keys aligned."""
    width = max((len(k) for k in values), default=0)
    return "\n".join(f"{k.ljust(width)}  {'-' if v is None else v}" for k, v in values.items())


def emit(args, data: dict, human: str | None) -> None:
    """Print ``data`` as JSON when ``--json`` was given, else the human text."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    elif human:
        print(human)
