"""What one attempt leads to: the message's next state from an SMTP result (or a failure
before SMTP), its retry delay, and its recipients' progress across attempts.

Recipient progress: ``rcpt_done`` lists who already has the message (an earlier attempt's
transactions), ``refused`` who was refused.  An attempt sends only to the others, minus
those refused for good (5xx); a retry keeps both up to date.  A message that reached some
recipients and runs out of retries for the rest ends ``sent``, the rest listed in
``refused`` with the last reason: the report says exactly who did not get it.
"""

from __future__ import annotations

import functools
import json
import logging
import random

from common import metrics
from common.config import Config
from common.enums import DEFAULT_TENANT, Next, Outcome
from common.logs import fields
from common.store.claims import Attempt, Transition
from dispatcher.smtp import Result

logger = logging.getLogger(__name__)

JITTER = 0.10  # retry delays vary ±10 % so a burst of failures does not retry in lockstep
# consecutive temporary failures of one account before it is logged as failing: a greylisted
# message is not an outage, a refused connection for every message is
FAILING_AFTER = 3
TRANSIENT = frozenset({Outcome.TEMPORARY, Outcome.UNCERTAIN})


def progress(row: dict) -> tuple[list[str], dict[str, list]]:
    """(recipients who have the message, refusals so far) of a claimed row."""
    done = json.loads(row["rcpt_done"]) if row.get("rcpt_done") else []
    refused = json.loads(row["refused"]) if row.get("refused") else {}
    return done, refused


def still_to_send(row: dict, recipients: list[str]) -> list[str]:
    """The envelope recipients this attempt sends to."""
    if not (row["rcpt_done"] or row["refused"]):  # the common case: a first attempt
        return recipients
    done, refused = progress(row)
    # refused for good: a 5xx, or no code at all (suppressed, never offered to a server)
    skip = set(done) | {addr for addr, (code, _) in refused.items() if code is None or code >= 500}
    return [addr for addr in recipients if addr not in skip]


class Judge:
    """Turns results into transitions under the configured retry policy."""

    def __init__(self, config: Config, rng: random.Random):
        self.config, self.rng = config, rng

    def retry_delay(self, attempts_done: int, uncertain: bool = False) -> float:
        """Seconds before the next try after ``attempts_done`` attempts (last delay repeats)."""
        delays = self.config.retry_delays
        delay = delays[min(attempts_done, len(delays)) - 1] * self.rng.uniform(
            1 - JITTER, 1 + JITTER
        )
        if uncertain:  # it may have been delivered: never sooner than the second delay
            delay = max(delay, delays[min(1, len(delays) - 1)])
        return delay

    def after(self, row: dict, result: Result, start: float, now: float,
              duration: float | None = None) -> Transition:  # fmt: skip
        """The transition an SMTP result (or a failure before SMTP) leads to."""
        attempt = Attempt(row["id"], row["account_id"], start, result.outcome, result.code,
                          result.detail, duration, row["tenant_id"])  # fmt: skip
        done, earlier = progress(row)
        done = done + result.accepted if done else result.accepted
        refused = result.refused
        if earlier:
            refused = {a: v for a, v in {**earlier, **refused}.items() if a not in done}
        if result.outcome is Outcome.SENT:  # SENDING -> SENT
            return Transition(attempt, Next.SENT, now, refused=refused or None)
        if result.outcome is Outcome.PERMANENT:  # SENDING -> ERROR
            return Transition(attempt, Next.ERROR, now, error=result.detail,
                              refused=refused or None)  # fmt: skip
        uncertain = result.outcome is Outcome.UNCERTAIN
        tries = row["attempts"] + 1
        if tries > self.config.max_retries:
            return self._give_up(attempt, result, now, tries, done, refused)
        # SENDING -> DEFERRED: retry later; an uncertain send waits at least the 2nd delay
        return Transition(
            attempt,
            Next.RETRY,
            now,
            ready_at=now + self.retry_delay(tries, uncertain),
            error=result.detail,
            refused=refused or None,
            possible_duplicate=uncertain,
            rcpt_done=done or None,
        )

    def _give_up(self, attempt, result: Result, now, tries, done, refused) -> Transition:
        """Retries exhausted: sent if some recipients have it (the rest refused), else error."""
        uncertain = result.outcome is Outcome.UNCERTAIN
        error = f"{result.detail} (gave up after {tries} attempts)"
        if done:  # SENDING -> SENT, partially
            refused.update({a: [result.code or 0, error] for a in result.pending})
            return Transition(attempt, Next.SENT, now, refused=refused or None,
                              possible_duplicate=uncertain)  # fmt: skip
        # SENDING -> ERROR
        return Transition(attempt, Next.ERROR, now, error=error, refused=refused or None,
                          possible_duplicate=uncertain)  # fmt: skip


def label(tenant: str, account_id: str | None) -> str:
    """An account as log lines name it: its id (``default``: the [smtp] account), after its
    tenant's id and a slash unless it is the default tenant's."""
    account = metrics.account_label(account_id)
    return account if tenant == DEFAULT_TENANT else f"{tenant}/{account}"


class Series:
    """One account's per-attempt metric children, looked up once per process (a ``labels``
    lookup per counter per message costs more than the counting)."""

    def __init__(self, tenant: str, account_id: str | None):
        labels = metrics.labels_of(tenant, account_id)
        self.attempts = {o: metrics.ATTEMPTS.labels(*labels, o) for o in Outcome}
        self.sent = metrics.SENT.labels(*labels)
        self.errors = metrics.ERRORS.labels(*labels)
        self.deferred = metrics.DEFERRED.labels(*labels)
        self.enqueue_to_sent = metrics.ENQUEUE_TO_SENT_SECONDS.labels(*labels)
        self.send_seconds = metrics.SMTP_SEND_SECONDS.labels(*labels)


@functools.lru_cache(maxsize=4096)
def series(tenant: str, account_id: str | None) -> Series:
    """The metric children of a tenant's account."""
    return Series(tenant, account_id)


def count(row: dict, transition: Transition, log_activity: bool) -> None:
    """Metrics of one attempt, and its log line with ``delivery_activity``."""
    children, attempt = series(row["tenant_id"], row["account_id"]), transition.attempt
    children.attempts[attempt.outcome].inc()
    if transition.state is Next.SENT:
        children.sent.inc()
        children.enqueue_to_sent.observe(max(0.0, transition.now - row["enqueued_at"]))
    elif transition.state is Next.ERROR:
        children.errors.inc()
    else:
        children.deferred.inc()
    if log_activity:
        logger.info(
            fields(
                event="attempt",
                id=row["id"],
                account=label(row["tenant_id"], row["account_id"]),
                outcome=attempt.outcome,
                state=transition.state,
                code=attempt.smtp_code or "",
                attempt=row["attempts"] + 1,
                duration=f"{attempt.duration or 0:.4f}",
                detail=attempt.detail,
            )
        )


class AccountHealth:
    """One log line when an account starts failing temporarily, one when it sends again."""

    def __init__(self):
        self.failures: dict[str, int] = {}  # account label -> temporary failures in a row

    def note(self, account: str, attempt: Attempt) -> None:
        """Count the attempt's outcome for its account; log the state changes."""
        if attempt.outcome in TRANSIENT:
            failures = self.failures[account] = self.failures.get(account, 0) + 1
            if failures == FAILING_AFTER:  # OK -> FAILING
                logger.warning(
                    fields(
                        event="account_failing",
                        account=account,
                        failures=failures,
                        code=attempt.smtp_code or "",
                        detail=attempt.detail,
                    )
                )
        elif attempt.outcome is Outcome.SENT:
            failures = self.failures.pop(account, 0)
            if failures >= FAILING_AFTER:  # FAILING -> OK
                logger.info(fields(event="account_recovered", account=account, failures=failures))
