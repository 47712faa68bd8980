"""Running a document's shell blocks as a reader would: two terminals, real processes.

The reader's first terminal runs the block that ends in ``make run`` (the service, in the
foreground until Ctrl-C); the second runs every other block in order, in one shell, so
exported variables and background jobs (``kill %1``) carry over.  Between blocks the test may
insert waits (a port that must listen, an outcome that must arrive): a reader is slower than
a script.  Only the ports change: a document says 8000, the test gives a free port.

    doc = Walkthrough(tmp_path, env, ports={8000: stack_port, 2525: smtp_port})
    doc.start_service(blocks[0])            # waits for /health
    out = doc.run([blocks[1], blocks[2]], between={0: "wait_port 2525"})
    doc.stop_service()                      # Ctrl-C; returns the processes that outlived it
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

import requests

from tests.support.procs import ROOT, wait_for
from tests.support.stack import alive, descendants

FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)
APT_INSTALL = re.compile(r"^sudo apt-get install -y (.+)$", re.M)
# helpers the test inserts between blocks; a reader waits with their eyes instead
PRELUDE = r"""
set -e
wait_port() {  # wait_port PORT: until something listens there
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1
    done
    echo "port $1 never opened" >&2; return 1
}
wait_output() {  # wait_output COMMAND PATTERN: until the command's output matches
    for _ in $(seq 1 600); do
        eval "$1" 2>/dev/null | grep -q -- "$2" && return 0; sleep 0.1
    done
    echo "never: $1 ~ $2" >&2; return 1
}
"""


def blocks(text: str, lang: str = "sh") -> list[str]:
    """The fenced blocks of one language, in document order."""
    return [body for fence_lang, body in FENCE.findall(text) if fence_lang == lang]


def section(text: str, heading: str) -> str:
    """The part of a markdown text from ``heading`` to the next heading of the same level."""
    start = text.index(heading)
    level = heading.split(" ", 1)[0]
    end = text.find(f"\n{level} ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


class Walkthrough:
    """A document's commands against this checkout (its .venv is already built)."""

    def __init__(self, tmp: Path, env: dict, ports: dict[int, int], paths: dict | None = None):
        self.tmp, self.env, self.ports, self.paths = tmp, env, ports, paths or {}
        self.service: subprocess.Popen | None = None
        self.seen: set[int] = set()

    def localize(self, text: str) -> str:
        """The block as the test runs it: free ports, test paths, installs checked not run."""
        for documented, real in self.ports.items():
            text = re.sub(rf"(?<!\d){documented}(?!\d)", str(real), text)
        for documented, real in self.paths.items():
            text = text.replace(documented, str(real))
        # the packages must be there already (the test cannot install); dpkg says if not
        return APT_INSTALL.sub(r"dpkg-query -W \1 > /dev/null", text)

    def start_service(self, block: str, port: int) -> None:
        """The first terminal: the block ending in ``make run``; returns once /health answers."""
        assert block.rstrip().endswith("make run"), block
        log = open(self.tmp / "terminal-1.log", "ab")  # noqa: SIM115 - closed in stop_service
        self.service = subprocess.Popen(
            ["bash", "-c", PRELUDE + self.localize(block)], cwd=ROOT, env=self.env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.service.log_file = log
        wait_for(lambda: self._healthy(port), timeout=90, interval=0.2, message="make run")
        self.seen = {self.service.pid} | descendants(self.service.pid)

    def _healthy(self, port: int) -> bool:
        assert self.service.poll() is None, self.service_log()
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok
        return False

    def service_log(self) -> str:
        return (self.tmp / "terminal-1.log").read_text(errors="replace")

    def run(self, steps: list[str], between: dict[int, str] | None = None) -> list[str]:
        """The second terminal: every step in one shell; returns each step's output."""
        script = [PRELUDE]
        for n, step in enumerate(steps):
            script += [f"echo '=== step {n}'", self.localize(step)]
            script.append(self.localize((between or {}).get(n, "")))
        out_path = self.tmp / "terminal-2.log"
        with open(out_path, "wb") as out:
            shell = subprocess.Popen(
                ["bash", "-c", "\n".join(script)], cwd=ROOT, env=self.env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            try:
                code = shell.wait(timeout=180)
            finally:  # background jobs share the shell's process group: none may outlive it
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(shell.pid, signal.SIGKILL)
        text = out_path.read_text(errors="replace")
        assert code == 0, text
        return re.split(r"^=== step \d+\n", text, flags=re.M)[1:]

    def stop_service(self) -> set[int]:
        """Ctrl-C in the first terminal; the processes still alive afterwards (none, we hope)."""
        if self.service is None:
            return set()
        self.seen |= descendants(self.service.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.service.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        try:
            self.service.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.service.pid, signal.SIGKILL)
            self.service.wait()
        self.service.log_file.close()
        self.service = None
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not any(alive(p) for p in self.seen), timeout=10, message="gone")
        survivors = {p for p in self.seen if alive(p)}
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return survivors
