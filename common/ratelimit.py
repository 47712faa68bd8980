"""The rate-limit ledger: strict sliding windows per SMTP account, shared by every dispatcher.

One file per account under ``var/ratelimit/``, read and changed only while holding an
exclusive ``flock`` on it, so any number of processes on the host see one history.  A send
calls ``Ledger.reserve()`` before it starts: either the start is recorded, or nothing is and
the caller learns the earliest moment a slot frees.  A tenant with tenant-wide limits has a
file of its own too (``Meter``), and a send of one of its accounts reserves in both at once
(``reserve_all``: every file locked, in a fixed order, before any is read).

The file is a fixed-size ring of the most recent send starts, as many as the largest
configured limit.  For a window of length W with limit L the decision needs one entry: the
L-th most recent start ``e``; a start at ``t`` is allowed when ``t >= e + W``, so no
half-open interval ``[a, a + W)`` ever holds more than L starts.  A reservation reads the
header and one slot per window and writes one slot and the header: constant work whatever
the limit.  docs/ratelimit.md has the layout and its costs.

A header (magic, version, boot id, CRC) and a CRC per slot catch torn or garbage files;
those, a reboot (page cache lost), and a change of limits that needs more history than the
ring holds are answered by rewriting the ring from what it still proves plus the send
starts recorded in the database (the ``rebuild`` callable).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import itertools
import logging
import math
import os
import re
import struct
import uuid
import zlib
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path

from common.enums import DEFAULT_TENANT
from common.logs import fields

logger = logging.getLogger(__name__)

# (Limits field, window length in seconds), shortest first.
WINDOWS = (("per_second", 1.0), ("per_minute", 60.0), ("per_hour", 3600.0), ("per_day", 86400.0))

MAGIC = b"AMRLDG"
VERSION = 1  # bump when the layout below changes; an old file is then rebuilt, not misread
# magic, version, boot id, capacity, count, head (next slot to write), complete_since
# (every start at or after it is in the ring), newest (latest start recorded), CRC of the rest
HEADER = struct.Struct("<6sH16sIIIdd")
HEADER_CRC = struct.Struct("<I")
HEADER_SIZE = 64  # HEADER + CRC (60 bytes) padded, so slots start on an aligned offset
SLOT = struct.Struct("<dI")  # start time, CRC of (slot index, start time)
SLOT_INDEX = struct.Struct("<Id")
SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"

# What a ledger file meters: an account id alone (None: the [smtp] account) names an
# account of the default tenant, as before tenants; a Meter names any.
Key = Hashable
Rebuild = Callable[[Key, float], list[float]]


class CorruptLedger(Exception):
    """The ledger file cannot be trusted; the message says why."""


@dataclass(frozen=True)
class Limits:
    """An account's send limits; None means no limit for that window."""

    per_second: int | None = None
    per_minute: int | None = None
    per_hour: int | None = None
    per_day: int | None = None

    def __post_init__(self) -> None:
        for name, _ in WINDOWS:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"limit {name} must be at least 1, got {value}")

    @classmethod
    def from_account(cls, row: dict | None) -> Limits:
        """The limits of an ``accounts`` row (``limit_per_*`` columns); None: no limits."""
        if row is None:
            return cls()
        return cls(**{name: row.get("limit_" + name) for name, _ in WINDOWS})

    def __bool__(self) -> bool:
        return any(limit is not None for limit, _ in self.windows())

    def windows(self) -> list[tuple[int, float]]:
        """(limit, window seconds) for every configured window."""
        pairs = [(getattr(self, name), seconds) for name, seconds in WINDOWS]
        return [(limit, seconds) for limit, seconds in pairs if limit is not None]

    @property
    def capacity(self) -> int:
        """Ring slots needed: the largest limit (the L-th most recent start decides)."""
        return max(limit for limit, _ in self.windows())

    @property
    def longest(self) -> float:
        """The longest configured window: history older than this never matters."""
        return max(seconds for _, seconds in self.windows())


@functools.cache
def boot_id() -> bytes:
    """This boot's id: a ledger written before a reboot may have lost unflushed writes."""
    try:
        with open(BOOT_ID_PATH) as handle:
            return uuid.UUID(handle.read().strip()).bytes
    except (OSError, ValueError):
        return bytes(16)


@dataclass(frozen=True)
class Meter:
    """The sends one ledger file counts: those of one account of a tenant (account_id None:
    the [smtp] account), or with ``whole``, those of every account of the tenant."""

    tenant_id: str
    account_id: str | None = None
    whole: bool = False


def file_name(key: Key) -> str:
    """A file name for a meter (or a default tenant's account id) that no other can produce.

    The default tenant's accounts keep the names they had before tenants; another tenant's
    files start with ``tenant-<id>.`` (a tenant id is a slug, without dots).
    """
    if not isinstance(key, Meter):
        return _account_file(key)
    if not SAFE_NAME.fullmatch(key.tenant_id) or "." in key.tenant_id:
        raise ValueError(f"not a tenant id: {key.tenant_id!r}")
    if key.whole:
        return f"tenant-{key.tenant_id}.ledger"
    if key.tenant_id == DEFAULT_TENANT:
        return _account_file(key.account_id)
    return f"tenant-{key.tenant_id}.{_account_file(key.account_id)}"


def _account_file(account_id: str | None) -> str:
    if account_id is None:
        return "default.ledger"  # the implicit [smtp] account; real ids get a prefix
    if SAFE_NAME.fullmatch(account_id) and account_id not in {".", ".."}:
        return f"account-{account_id}.ledger"
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", account_id)[:60]
    digest = hashlib.sha256(account_id.encode()).hexdigest()
    return f"account~{readable}~{digest}.ledger"  # "~" never occurs in a plain name


def _slot_crc(index: int, start: float) -> int:
    return zlib.crc32(SLOT_INDEX.pack(index, start))


@dataclass
class _Header:
    boot: bytes
    capacity: int
    count: int
    head: int
    complete_since: float
    newest: float

    def pack(self) -> bytes:
        body = HEADER.pack(
            MAGIC,
            VERSION,
            self.boot,
            self.capacity,
            self.count,
            self.head,
            self.complete_since,
            self.newest,
        )
        return (body + HEADER_CRC.pack(zlib.crc32(body))).ljust(HEADER_SIZE, b"\0")

    @classmethod
    def unpack(cls, data: bytes) -> _Header:
        if len(data) < HEADER_SIZE:
            raise CorruptLedger("short header")
        body = data[: HEADER.size]
        magic, version, *values = HEADER.unpack(body)
        if magic != MAGIC or version != VERSION:
            raise CorruptLedger("bad magic or version")
        if HEADER_CRC.unpack_from(data, HEADER.size)[0] != zlib.crc32(body):
            raise CorruptLedger("header checksum mismatch")
        header = cls(*values)
        if not (
            0 < header.capacity
            and 0 <= header.count <= header.capacity
            and 0 <= header.head < header.capacity
        ):
            raise CorruptLedger("header fields out of range")
        return header


class _Ring:
    """The ring of one open, locked ledger file; entry(k) is the k-th most recent start."""

    def __init__(self, fd: int, header: _Header):
        self.fd = fd
        self.header = header
        self._cache: dict[int, float] = {}

    @classmethod
    def open(cls, fd: int) -> _Ring:
        """Read and check the header and the file size."""
        header = _Header.unpack(os.pread(fd, HEADER_SIZE, 0))
        if os.fstat(fd).st_size != HEADER_SIZE + SLOT.size * header.capacity:
            raise CorruptLedger("file size does not match its header")
        return cls(fd, header)

    def entry(self, k: int) -> float:
        """The k-th most recent start (1 = newest), checked against its CRC and the order."""
        if k not in self._cache:
            index = (self.header.head - k) % self.header.capacity
            start, crc = SLOT.unpack(os.pread(self.fd, SLOT.size, HEADER_SIZE + SLOT.size * index))
            if crc != _slot_crc(index, start) or not math.isfinite(start):
                raise CorruptLedger(f"slot {index} checksum mismatch")
            if start > self.header.newest:
                raise CorruptLedger(f"slot {index} is newer than the newest start")
            self._cache[k] = start
        return self._cache[k]

    def entries(self) -> list[float]:
        """Every start in the ring, oldest first (reads the whole ring)."""
        starts = [self.entry(k) for k in range(self.header.count, 0, -1)]
        if any(a > b for a, b in itertools.pairwise(starts)):
            raise CorruptLedger("starts out of order")
        return starts

    def free_at(self, limits: Limits, start: float) -> float | None:
        """None if a start at ``start`` fits every window, else when the last blocker frees."""
        earliest = None
        for limit, seconds in limits.windows():
            if self.header.count >= limit:
                frees = self.entry(limit) + seconds
                if start < frees:
                    earliest = frees if earliest is None else max(earliest, frees)
        return earliest

    def append(self, start: float) -> None:
        """Record a start: the slot first, then the header that makes it count."""
        header = self.header
        os.pwrite(
            self.fd,
            SLOT.pack(start, _slot_crc(header.head, start)),
            HEADER_SIZE + SLOT.size * header.head,
        )
        header.head = (header.head + 1) % header.capacity
        header.count = min(header.count + 1, header.capacity)
        header.newest = start
        os.pwrite(self.fd, header.pack(), 0)
        self._cache.clear()


class Ledger:
    """Reserve send slots in the per-account ledger files of one directory."""

    def __init__(self, directory: str | os.PathLike, rebuild: Rebuild | None = None):
        self.directory = Path(directory)
        self.rebuild = rebuild or (lambda account_id, since: [])

    def path_for(self, key: Key) -> Path:
        """The meter's ledger file."""
        return self.directory / file_name(key)

    def starts(self, key: Key) -> list[float]:
        """The recorded starts still in the meter's ring, oldest first (for inspection)."""
        if not self.path_for(key).exists():
            return []
        with self._locked(key) as fd:
            return _salvage(fd)

    def reserve(self, key: Key, limits: Limits, now: float) -> float | None:
        """Record a send start at ``now`` and return None, or record nothing and return the
        earliest epoch time at which every window has a free slot."""
        held = self.reserve_all([(key, limits)], now)
        return None if held is None else held[0]

    def reserve_all(self, meters: list[tuple[Key, Limits]], now: float) -> tuple[float, Key] | None:
        """Record one send start in every meter's ledger, or in none: None when recorded,
        else (the earliest time every window of every meter has a slot, the meter whose
        window frees last).  The files are locked in name order, so two processes reserving
        in the same two meters never wait for each other in a circle."""
        wanted = sorted(
            ((key, limits) for key, limits in meters if limits), key=lambda m: file_name(m[0])
        )
        if not wanted:
            return None
        with contextlib.ExitStack() as locks:
            rings = [
                (key, limits, self._ring(locks.enter_context(self._locked(key)), key, limits, now))
                for key, limits in wanted
            ]
            # one start for all: a clock stepping back never reorders a ring
            start = max(now, *(ring.header.newest for _, _, ring in rings))
            blocked = [(ring.free_at(limits, start), key) for key, limits, ring in rings]
            blocked = [(frees, key) for frees, key in blocked if frees is not None]
            if blocked:
                return max(blocked, key=lambda held: held[0])
            for _, _, ring in rings:
                ring.append(start)
            return None

    @contextlib.contextmanager
    def _locked(self, key: Key) -> Iterator[int]:
        """An fd on the account's file, exclusively locked; the lock dies with the process."""
        if not self.directory.is_dir():
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)
        path = self.path_for(key)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if _same_file(fd, path):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the file was replaced or removed while we waited: lock the new one
        try:
            yield fd
        finally:
            os.close(fd)

    def _ring(self, fd: int, key: Key, limits: Limits, now: float) -> _Ring:
        """The checked ring for these limits, rewritten first if it cannot be used as is."""
        if os.fstat(fd).st_size == 0:
            return self._rewrite(fd, key, limits, now, "new")
        try:
            ring = _Ring.open(fd)
            reason = _unfit(ring.header, limits, now)
            if reason is None:
                ring.free_at(limits, now)  # reads and checks the slots that will decide
                return ring
        except CorruptLedger as exc:
            reason = f"corrupt: {exc}"
        return self._rewrite(fd, key, limits, now, reason)

    def _rewrite(self, fd, key: Key, limits: Limits, now: float, reason: str) -> _Ring:
        """Rewrite the ring from the starts it still proves plus the database's older ones."""
        since = now - limits.longest
        kept = _salvage(fd)
        oldest_kept = kept[0] if kept else math.inf
        older = [t for t in self.rebuild(key, since) if t < oldest_kept]
        starts = sorted(t for t in older + kept if t >= since)[-limits.capacity :]
        header = _Header(
            boot_id(),
            limits.capacity,
            len(starts),
            len(starts) % limits.capacity,
            since,
            starts[-1] if starts else since,
        )
        slots = b"".join(SLOT.pack(t, _slot_crc(i, t)) for i, t in enumerate(starts))
        os.pwrite(fd, bytes(HEADER_SIZE), 0)  # invalid until the new header lands last
        os.ftruncate(fd, HEADER_SIZE + SLOT.size * limits.capacity)
        os.pwrite(fd, slots, HEADER_SIZE)
        os.pwrite(fd, header.pack(), 0)
        log = logger.warning if reason.startswith("corrupt") else logger.info
        log(
            "ratelimit ledger rebuilt %s",
            fields(
                ledger=file_name(key),
                reason=reason,
                kept=len(kept),
                from_db=len(older),
                capacity=limits.capacity,
            ),
        )
        return _Ring(fd, header)


def _unfit(header: _Header, limits: Limits, now: float) -> str | None:
    """Why a sound ring cannot serve these limits now, or None."""
    if header.boot != boot_id():
        return "written before a reboot"
    if header.capacity != limits.capacity:
        return f"capacity {header.capacity} -> {limits.capacity}"
    if header.count < header.capacity and header.complete_since > now - limits.longest:
        return "history shorter than the longest window"
    return None


def _salvage(fd: int) -> list[float]:
    """The starts of the current file, oldest first, when it is sound; else nothing."""
    if os.fstat(fd).st_size == 0:
        return []
    try:
        return _Ring.open(fd).entries()
    except CorruptLedger:
        return []


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
