"""Outcomes not yet committed, kept where a SIGKILL cannot take them: the kernel's page cache.

Outcomes are committed in groups (``core.OUTCOME_GROUP``): one commit per message costs more
than the SMTP transaction to a nearby relay.  A dispatcher killed after a server accepted a
message and before its group was committed would leave a row that the next holder sends
again.  So every transition that may have delivered something (sent, uncertain, a partial
send) is appended to this process's journal with one unbuffered ``write()`` before the
next message goes out, and the journal is emptied after each commit.  The kernel keeps
what was written when the process dies (only a power loss can lose it; then the FULL commit
at least every 50 ms bounds what is lost).

Each journal is ``flock``ed for its process's life.  A journal whose lock can be taken
belongs to a process that is gone: before claiming, a dispatcher replays what it holds as
the dead holder's own outcomes (``store.claims.record`` fenced by the dead owner, so a row
another dispatcher has taken meanwhile is left alone), then deletes it.  A kill therefore
costs at most the message in hand: the one whose acceptance had not been written yet.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import weakref
from pathlib import Path

from common import store
from common.enums import MAYBE_DELIVERED, Next, Outcome
from common.logs import fields
from common.store.claims import Attempt, Transition

logger = logging.getLogger(__name__)

SUFFIX = ".journal"
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # one for every line: dumps builds one a call


def encode(t: Transition) -> bytes:
    """One journal line: the transition, as ``record`` would apply it."""
    a = t.attempt
    return (
        _ENCODER.encode(
            [a.tenant_id, a.message_id, a.account_id, a.ts, a.outcome.value, a.smtp_code, a.detail,
             a.duration, t.state.value, t.now, t.ready_at, t.error, t.refused,
             t.possible_duplicate, t.rcpt_done]
        ).encode()
        + b"\n"
    )  # fmt: skip


def decode(line: bytes) -> Transition:
    """The transition of one journal line."""
    (tenant_id, message_id, account_id, ts, outcome, code, detail, duration, state, now, ready_at,
     error, refused, duplicate, rcpt_done) = json.loads(line)  # fmt: skip
    attempt = Attempt(
        message_id, account_id, ts, Outcome(outcome), code, detail, duration, tenant_id
    )
    return Transition(attempt, Next(state), now, ready_at, error, refused, duplicate, rcpt_done)


class Journal:
    """This process's journal: ``note`` before the next send, ``clear`` after a commit."""

    def __init__(self, directory: Path, owner: str):
        directory.mkdir(parents=True, mode=0o700, exist_ok=True)
        self.path = directory / f"{owner}{SUFFIX}"
        # locked under another name, then renamed: a recovery never finds it unlocked
        staged = directory / f".{owner}.new"
        self.fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)  # ours until the process is gone, however it goes
        os.rename(staged, self.path)
        self.dirty = False
        # an object dropped without close() (tests) still gives its descriptor back
        self._finalizer = weakref.finalize(self, os.close, self.fd)

    def note(self, transition: Transition) -> None:
        """Keep a transition that may have delivered a copy until its commit."""
        if transition.attempt.outcome in MAYBE_DELIVERED:
            os.write(self.fd, encode(transition))
            self.dirty = True

    def clear(self) -> None:
        """Everything noted is committed now."""
        if self.dirty:
            os.ftruncate(self.fd, 0)  # O_APPEND: the next line goes at the start again
            self.dirty = False

    def close(self, keep: bool = False) -> None:
        """Exit: the journal goes, unless ``keep`` (outcomes it holds were never committed:
        another dispatcher replays it once this process is gone)."""
        if not keep:
            self.path.unlink(missing_ok=True)
        self._finalizer()


def _decoded(line: bytes) -> Transition | None:
    """A line's transition; None for a line torn by a power loss (never by a kill)."""
    try:
        return decode(line)
    except (ValueError, TypeError):
        return None


def recover(conn, directory: Path, process: str) -> int:
    """Replay the journals of dispatchers that are gone; how many outcomes were applied."""
    applied = 0
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        with contextlib.suppress(FileNotFoundError):  # another dispatcher got there first
            applied += _replay(conn, path, process)
    return applied


def _replay(conn, path: Path, process: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # its process lives
        owner = path.name.removesuffix(SUFFIX)
        with os.fdopen(os.dup(fd), "rb") as stream:
            transitions = [t for t in map(_decoded, stream.read().splitlines()) if t]
        stale = store.claims.record(conn, transitions, process, owner) if transitions else []
        path.unlink()  # under the lock: nobody replays it twice
    finally:
        os.close(fd)
    if transitions:
        logger.warning(fields(event="journal_replayed", owner=owner,
                              applied=len(transitions) - len(stale), taken=len(stale)))  # fmt: skip
    return len(transitions) - len(stale)
