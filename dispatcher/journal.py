"""Outcomes not yet committed, kept where a SIGKILL cannot take them: the kernel's page cache.

Outcomes are committed in groups (``core.OUTCOME_GROUP``): one commit per message costs more
than the SMTP transaction to a nearby relay.  A dispatcher killed after a server accepted a
message and before its group was committed would leave a row that the next holder sends
again.  So each message about to go out is written to this process's journal first (the
message in hand), and so is each transition that may have delivered something (sent,
uncertain, a partial send); each with one unbuffered ``write()``.  The journal is emptied
after each commit.  The kernel keeps what was written when the process dies (only a power
loss can lose it; then the FULL commit at least every 50 ms bounds what is lost).

Each journal is ``flock``ed for its process's life.  A journal whose lock can be taken
belongs to a process that is gone: before claiming, a dispatcher replays what it holds as
the dead holder's own outcomes (``store.claims.record`` fenced by the dead owner, so a row
another dispatcher has taken meanwhile is left alone), marks the message that was in hand
``maybe_sent`` (its next claim flags it ``possible_duplicate``), then deletes the journal.
A kill therefore costs at most the message in hand, and only that message is flagged.
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
from common.store.claims import Attempt, Key, Transition

logger = logging.getLogger(__name__)

SUFFIX = ".journal"
DONE = b"[]\n"  # the message in hand ended and delivered nothing
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


def decode(line: bytes) -> Transition | Key | None:
    """What one journal line says: a transition, the key of the message going out, or
    None (the message in hand ended without delivering anything)."""
    item = json.loads(line)
    if len(item) < 3:
        return tuple(item) or None
    (tenant_id, message_id, account_id, ts, outcome, code, detail, duration, state, now, ready_at,
     error, refused, duplicate, rcpt_done) = item  # fmt: skip
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
        self.in_hand: Key | None = None
        # an object dropped without close() (tests) still gives its descriptor back
        self._finalizer = weakref.finalize(self, os.close, self.fd)

    def sending(self, key: Key) -> None:
        """The message ``key`` goes out now: if the process dies before its transition is
        noted, a copy may be with the server."""
        os.write(self.fd, _ENCODER.encode(key).encode() + b"\n")
        self.in_hand, self.dirty = key, True

    def note(self, transition: Transition) -> None:
        """Keep a transition that may have delivered a copy until its commit; for any other
        transition of the message in hand, that it delivered nothing."""
        if transition.attempt.outcome in MAYBE_DELIVERED or transition.rcpt_done:
            os.write(self.fd, encode(transition))
            self.dirty = True
        elif self.in_hand == transition.attempt.key:
            os.write(self.fd, DONE)
        self.in_hand = None

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


def _entries(lines: list[bytes]) -> tuple[list[Transition], Key | None]:
    """The transitions of a journal's lines, and the message that was in hand when its
    process died (None: none was).  A line torn by a power loss (never by a kill) is
    skipped."""
    transitions, in_hand = [], None
    for line in lines:
        try:
            entry = decode(line)
        except (ValueError, TypeError):
            continue
        if isinstance(entry, Transition):
            transitions.append(entry)
            entry = None
        in_hand = entry
    return transitions, in_hand


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
            transitions, in_hand = _entries(stream.read().splitlines())
        stale = []
        if transitions or in_hand:
            stale = store.claims.record(conn, transitions, process, owner, maybe_sent=in_hand)
        path.unlink()  # under the lock: nobody replays it twice
    finally:
        os.close(fd)
    if transitions or in_hand:
        logger.warning(fields(event="journal_replayed", owner=owner,
                              applied=len(transitions) - len(stale), taken=len(stale),
                              in_hand="" if in_hand is None else in_hand[1]))  # fmt: skip
    return len(transitions) - len(stale)
