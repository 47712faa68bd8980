"""Logging in logfmt: one line per event, ``key=value`` pairs, on stdout (supervisord keeps it).

Modules log ``logger.info(fields(event="sent", id=...))``.  The formatter puts time, level,
process and logger in front; a message that is not ``fields(...)`` (a library's) becomes
``msg="..."``, and a traceback becomes one ``exc="..."`` value, so every record stays on one
line whatever its text holds (quotes, newlines, Unicode line separators).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from urllib.parse import urlsplit

_BARE = re.compile(r"[^\s\"=\\\x00-\x1f\x7f\x85\u2028\u2029]+")  # needs no quotes
_KEY_JUNK = re.compile(r"[^A-Za-z0-9_.-]")


class Fields(str):
    """A message already in logfmt (made by ``fields``)."""


def value_text(value: object) -> str:
    """One logfmt value: bare when it can be, else JSON-quoted (every control escaped)."""
    text = "" if value is None else str(value)
    if _BARE.fullmatch(text):
        return text
    quoted = json.dumps(text, ensure_ascii=False)
    return (
        quoted.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")
    )


def fields(**values) -> Fields:
    """``key=value`` pairs for one log line, each value quoted and escaped as needed."""
    return Fields(
        " ".join(f"{_KEY_JUNK.sub('_', key)}={value_text(value)}" for key, value in values.items())
    )


def redact_url(url: str) -> str:
    """A URL without credentials, query or fragment (either may carry a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=... process=... logger=...`` followed by the event's own fields."""

    def __init__(self, process: str):
        super().__init__()
        self.process = value_text(process)

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        head = (
            f"ts={ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
            f"process={self.process} logger={value_text(record.name)}"
        )
        if isinstance(record.msg, Fields) and not record.args:
            body = str(record.msg)
        else:
            body = f"msg={value_text(record.getMessage())}"
        line = f"{head} {body}" if body else head
        if record.exc_info:
            line += f" exc={value_text(self.formatException(record.exc_info))}"
        return line


def setup_logging(level: str = "INFO", process: str | None = None) -> None:
    """Configure the root logger once per process; the process name comes from supervisord."""
    name = process or os.environ.get("SUPERVISOR_PROCESS_NAME") or os.path.basename(sys.argv[0])
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(LogfmtFormatter(name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
