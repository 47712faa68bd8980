"""Logging for entry points: one key=value line per event on stdout (supervisord keeps it)."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str = "INFO", process: str | None = None) -> None:
    """Configure the root logger once per process; the process name comes from supervisord."""
    name = process or os.environ.get("SUPERVISOR_PROCESS_NAME") or os.path.basename(sys.argv[0])
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s level=%(levelname)s process={name} logger=%(name)s %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def fields(**values) -> str:
    """key=value pairs, quoting values with spaces, for one log line."""
    parts = []
    for key, value in values.items():
        text = str(value)
        if not text or any(c in text for c in ' "='):
            text = '"' + text.replace('"', "'") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)
