"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``):
the standard library only, no driver to install.

Chromium reads commands on its fd 3 and writes answers and events on its fd 4, each message
one JSON text ended by a NUL byte.  Tests use it to log in through the real form (so the
token travels in a POST body, never in a URL), then read the page's DOM and take a
screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)
HIGH_FD = 10  # our pipe ends live above 4 so the child's dup2 onto 3 and 4 clobbers none


def _high(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, HIGH_FD)
    os.close(fd)
    return moved


class Chromium:
    """One headless browser with one page; ``close()`` ends it."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 1000):
        to_child, self._writer = map(_high, os.pipe())
        self._reader, from_child = map(_high, os.pipe())

        def wire() -> None:  # in the child, before exec: its fd 3 reads, its fd 4 writes
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=wire,  # noqa: PLW1509 - the test process starts no threads meanwhile
        )
        os.close(to_child)
        os.close(from_child)
        self._next_id = 0
        self._buffer = b""
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.call("Page.enable", session=True)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            session=True,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def call(self, method: str, session: bool = False, timeout: float = 30, **params) -> dict:
        """Send one command; its result (events that arrive meanwhile are kept)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._writer, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._receive(timeout)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        """The first event named ``method`` not consumed yet."""
        deadline = time.monotonic() + timeout
        while True:
            for n, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(n)
            self.events.append(self._receive(max(0.0, deadline - time.monotonic())))

    def _receive(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._reader], [], [], left)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._reader, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed its pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def navigate(self, url: str) -> None:
        """Open ``url`` and wait until the page has loaded."""
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", session=True, expression=expression)
        return result["result"].get("value")

    def submit(self, script: str) -> None:
        """Run a script that submits a form; wait for the page it leads to."""
        self.events.clear()
        self.evaluate(script)
        self.wait_event("Page.loadEventFired")

    def dom(self) -> str:
        """The page as Chromium's --dump-dom prints it."""
        return self.evaluate("document.documentElement.outerHTML")

    def screenshot(self, path: Path) -> bytes:
        """A PNG of the viewport, written to ``path``."""
        data = base64.b64decode(self.call("Page.captureScreenshot", session=True)["data"])
        path.write_bytes(data)
        return data

    def close(self) -> None:
        """End the browser and every process it started."""
        try:
            self.call("Browser.close", timeout=10)
        except (OSError, EOFError, TimeoutError):
            pass
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._writer)
        os.close(self._reader)
