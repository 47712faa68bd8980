"""One bouncer iteration: handle every mail waiting in the bounce folder (docs/bounces.md).

For each mail: fetch it, recognise the notification (``bouncer.dsn``), find the message it
is about (VERP token first, then Message-ID), record its events and suppressions together
with the mail's key (the SHA-256 of its bytes) in one transaction, then move it to the
processed or unmatched folder.  Recording comes first: a connection lost before the move
leaves the mail where it was, and the next pass finds its key and only moves it, so nothing
is processed twice and nothing is lost.

States of the mailbox link:
  DOWN     no connection; the next try at ``retry_at`` (1, 2, 4 ... 60 s after failures)
  WATCHING connected: IDLE waits for the server's news, or (no IDLE) a search every
           ``imap_poll_seconds``; a search at least every IDLE_RENEW regardless
  WATCHING -> DOWN on any mailbox error; DOWN -> WATCHING once open() works
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable

from bouncer import dsn
from bouncer.imap import ERRORS, IDLE_RENEW, Mailbox
from common import metrics, store, wakeup
from common.addresses import parse_address_list, verp_tokens
from common.config import Config
from common.logs import fields
from common.store.bounces import Event, Suppress
from common.suppression import kills_address

logger = logging.getLogger(__name__)

PROCESSED, UNMATCHED = "processed", "unmatched"
POLL_SECONDS = 1.0  # longest wait between turns: keeps the heartbeat fresh and TERM prompt
SCAN_BATCH = 100  # mails handled per turn; the rest follow at once in the next turn
RETRY_MAX = 60.0  # seconds between reconnection attempts at most
FORGET_EVERY = 3600.0  # seconds between purges of the handled-mail keys
MAIL_MEMORY_SECONDS = 30 * 86400  # a handled mail's key is kept this long (it left the folder)
ANSWERS = {"failed", "delayed"}  # actions that become events; delivered etc. are only filed


class Bouncer:
    """Watches the bounce mailbox and turns notifications into events and suppressions."""

    def __init__(
        self,
        conn,
        config: Config,
        *,
        open_mailbox: Callable[[Config], Mailbox] = Mailbox.open,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        should_stop: Callable[[], bool] = lambda: False,
    ):
        self.conn, self.config, self.open_mailbox = conn, config, open_mailbox
        self.clock, self.sleep, self.should_stop = clock, sleep, should_stop
        self.mailbox: Mailbox | None = None
        self.failures, self.retry_at = 0, 0.0
        self.due, self.next_scan = True, 0.0  # due: search the folder at the next turn
        self.forgotten_at = 0.0
        for result in metrics.BOUNCE_MAIL_RESULTS:  # both series exist before the first mail
            metrics.BOUNCE_MAILS.labels(result)

    def reconfigure(self, config: Config) -> None:
        """Adopt a re-read configuration (SIGHUP): reconnect with it."""
        self.config = config
        self._drop()
        self.retry_at = 0.0

    # -- the iteration ------------------------------------------------------------------------
    def run_once(self, now: float) -> bool:
        """Search the folder when due and handle what waits; True when mail was handled."""
        self._forget_if_due(now)
        try:
            if not self._connected(now) or (not self.due and now < self.next_scan):
                return False
            return self._scan(now)
        except ERRORS as exc:
            self._lost(exc, now)
            return False

    def wait(self, seconds: float) -> None:
        """Until the next turn: IDLE while the server offers it, else sleep."""
        if self.mailbox is None or not self.mailbox.can_idle or self.due:
            self.sleep(seconds)
            return
        try:
            self.due = self.mailbox.wait(seconds, self.clock())
        except ERRORS as exc:
            self._lost(exc, self.clock())

    def idle_seconds(self, now: float) -> float:
        """How long the loop may wait when nothing is due."""
        until = self.retry_at if self.mailbox is None else self.next_scan
        return max(0.0, min(POLL_SECONDS, until - now))

    def _connected(self, now: float) -> bool:
        if self.mailbox is not None:
            return True
        if now < self.retry_at:
            return False
        self.mailbox = self.open_mailbox(self.config)
        logger.info(
            fields(
                event="mailbox_open",
                host=self.config.imap_host,
                folder=self.config.imap_folder,
                idle=self.mailbox.can_idle,
                after_failures=self.failures,
            )
        )
        self.failures, self.due = 0, True
        return True

    def _scan(self, now: float) -> bool:
        uids = self.mailbox.waiting()
        for uid in uids[:SCAN_BATCH]:
            if self.should_stop():  # TERM: the mail in hand is done; the rest waits
                return True
            self._handle(uid)
        self.due = len(uids) > SCAN_BATCH
        wait = IDLE_RENEW if self.mailbox.can_idle else self.config.imap_poll_seconds
        self.next_scan = now + wait
        return bool(uids)

    def _lost(self, exc: BaseException, now: float) -> None:
        """WATCHING -> DOWN: forget the link, try again later."""
        self._drop()
        self.failures += 1
        metrics.BOUNCE_MAILBOX_FAILURES.inc()
        delay = min(RETRY_MAX, 2.0 ** (self.failures - 1))
        self.retry_at = now + delay
        logger.warning(
            fields(
                event="mailbox_failed",
                host=self.config.imap_host,
                reason=f"{type(exc).__name__}: {exc}",
                failures=self.failures,
                retry_in=delay,
            )
        )

    def _drop(self) -> None:
        if self.mailbox is not None:
            self.mailbox.close()
            self.mailbox = None

    # -- one mail -----------------------------------------------------------------------------
    def _handle(self, uid: str) -> None:
        """Record what the mail says (unless it was recorded before), then move it."""
        raw = self.mailbox.fetch(uid)
        if raw is None:
            return  # taken out of the folder meanwhile
        mail = dsn.load(raw)
        key = hashlib.sha256(raw).hexdigest()  # the same mail fetched again, whatever its UID
        result = store.bounces.mail_result(self.conn, key)
        if result is None:
            result = self._record(mail, key, self.clock())
        folder = self.config.imap_processed_folder
        if result == UNMATCHED:
            folder = self.config.imap_unmatched_folder
        self.mailbox.move(uid, folder)

    def _record(self, mail, key: str, now: float) -> str:
        try:
            notice = dsn.parse(mail)
        except Exception:  # one mail the parser chokes on must not block the rest
            logger.exception(fields(event="unparsable_mail", mail=_mail_id(mail)))
            notice = None
        message = self._match(notice) if notice is not None else None
        shape = notice.shape if notice is not None else None
        if message is None:
            store.bounces.record_mail(self.conn, key, UNMATCHED, shape, [], [], now, None)
            metrics.BOUNCE_MAILS.labels(UNMATCHED).inc()
            logger.info(
                fields(
                    event="bounce_mail", result=UNMATCHED, shape=shape or "-", mail=_mail_id(mail)
                )
            )
            return UNMATCHED
        events, suppress = _consequences(notice, message)
        tenant = message["tenant_id"]
        if store.bounces.record_mail(self.conn, key, PROCESSED, shape, events, suppress, now,
                                     tenant):  # fmt: skip
            self._note(notice, message, events, suppress, _mail_id(mail))
        return PROCESSED

    def _match(self, notice: dsn.Notification) -> dict | None:
        """The message a notification is about: by VERP token, else by Message-ID."""
        if self.config.verp_domain:
            for token in verp_tokens(" ".join(notice.envelope), self.config.verp_domain):
                found = store.bounces.message_by_token(self.conn, token)
                if found is not None:
                    return found
        for message_id in notice.message_ids:
            found = store.bounces.message_by_header(self.conn, message_id)
            if found is not None:
                return found
        return None

    def _note(self, notice, message: dict, events: list[Event], suppress, mail: str) -> None:
        """Metrics and log lines of a recorded notification; wake the reporter if it owes."""
        series = metrics.labels_of(message["tenant_id"], message["account_id"])
        metrics.BOUNCE_MAILS.labels(PROCESSED).inc()
        for recipient in notice.recipients:
            if recipient.action in {"failed", "complained"}:
                metrics.BOUNCES.labels(*series, recipient.kind).inc()
            logger.info(
                fields(
                    event="bounce",
                    tenant=message["tenant_id"],
                    id=message["id"],
                    recipient=recipient.address,
                    kind=recipient.kind,
                    action=recipient.action,
                    status=recipient.status or "-",
                    shape=notice.shape,
                    mail=mail,
                )
            )
        for entry in suppress:
            logger.info(
                fields(
                    event="suppressed",
                    address=entry.address,
                    reason=entry.reason,
                    status=entry.status or "-",
                )
            )
        if any(e.action == "failed" for e in events):
            wakeup.notify(self.config.run_dir, wakeup.REPORTER)

    def _forget_if_due(self, now: float) -> None:
        if now - self.forgotten_at >= FORGET_EVERY:
            self.forgotten_at = now
            store.bounces.forget_mails(self.conn, now - MAIL_MEMORY_SECONDS)

    def close(self) -> None:
        """Log out of the mailbox (shutdown)."""
        self._drop()


def _consequences(notice: dsn.Notification, message: dict) -> tuple[list[Event], list[Suppress]]:
    """The events a notification records and the addresses it suppresses.

    Only a recipient of the message itself is suppressed: a notification about an address
    the message was forwarded to, or a forged one, cannot silence anybody else.
    """
    recipients = _recipients(message["payload"])
    events, suppress = [], []
    for r in notice.recipients:
        ours = r.address.lower() in recipients
        if r.action in ANSWERS:
            events.append(Event(message["id"], r.address, r.kind, r.action, r.status, r.diagnostic))
        if ours and r.action == "complained":
            suppress.append(Suppress(r.address, "complaint", None, r.diagnostic))
        elif ours and r.action == "failed" and kills_address(r.status):
            suppress.append(Suppress(r.address, "hard_bounce", r.status, r.diagnostic))
    return events, suppress


def _mail_id(mail) -> str:
    """The Message-ID of a mailbox mail, for log lines."""
    return str(mail.get("Message-ID") or "-").strip()


def _recipients(payload: str) -> set[str]:
    """Every envelope recipient of a stored message, lower-cased."""
    item = json.loads(payload)
    found = set()
    for name in ("to", "cc", "bcc"):
        if item.get(name):
            found |= {address.lower() for _, address in parse_address_list(item[name])}
    return found
