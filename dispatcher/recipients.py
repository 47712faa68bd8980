"""One message to all its recipients, in as many SMTP transactions as the server needs.

A server may take as few as 100 recipients per transaction (RFC 5321 §4.5.3.1.8) and
answer the rest 452 (§4.5.3.1.10).  The recipients go out in chunks of the account's
``max_recipients_per_transaction``; those answered 452 go in the next transaction on the
same connection (same bytes, so the same Message-ID), the chunk shrinking to what the
server took.  When a transaction takes nobody, or fails as a whole, the recipients still
to go are ``pending``: the message is retried later for them alone (``rcpt_done`` keeps
who has it).  Every other reply keeps its meaning: a recipient refused with a 5xx or
another 4xx while others were accepted is listed in ``refused``; nobody accepted at all
-> any 4xx retries the message, else it fails.
"""

from __future__ import annotations

from common.enums import Outcome
from dispatcher.pool import Endpoint
from dispatcher.smtp import TOO_MANY_RECIPIENTS, Phase, Result, all_refused


def deliver(
    pool, key, endpoint: Endpoint, sender: str, recipients: list[str], data: bytes,
    delivered: bool = False,
) -> Result:  # fmt: skip
    """Send to every recipient; ``delivered``: earlier attempts already reached someone.

    The result's ``accepted``, ``refused`` and ``pending`` cover this attempt's recipients.
    """
    if not recipients:  # earlier attempts reached or finally refused every one of them
        outcome = Outcome.SENT if delivered else Outcome.PERMANENT
        return Result(outcome, Phase.RCPT, None, "no recipient left to send to")
    pending, limit = recipients, endpoint.rcpt_per_transaction
    accepted: list[str] = []
    refused: dict[str, list] = {}
    result = None
    while pending:
        chunk, pending = pending[:limit], pending[limit:]
        result = pool.send(key, endpoint, sender, chunk, data)
        if result.outcome is Outcome.SENT and not (result.refused or pending or accepted):
            return result  # the common case: one transaction, everyone accepted
        if result.phase is not Phase.RCPT and result.outcome is not Outcome.SENT:
            return _failed(result, chunk + pending, accepted, refused, delivered)
        again = [r for r in chunk if result.refused.get(r, [0])[0] == TOO_MANY_RECIPIENTS]
        refused.update({r: v for r, v in result.refused.items() if r not in again})
        accepted += result.accepted
        if again and not result.accepted:  # the server takes nobody more now: later
            return _finish(result, accepted, refused, again + pending, delivered)
        pending = again + pending
        limit = min(limit, len(result.accepted)) if again else limit
    return _finish(result, accepted, refused, [], delivered)


def _finish(last: Result, accepted, refused, pending, delivered: bool) -> Result:
    """Every transaction went through; who has the message decides the outcome."""
    if pending:
        detail = f"{len(pending)} recipients not taken yet ({last.detail})"
        return Result(Outcome.TEMPORARY, Phase.RCPT, TOO_MANY_RECIPIENTS, detail, refused,
                      accepted=accepted, pending=pending)  # fmt: skip
    if accepted or delivered:
        return Result(Outcome.SENT, Phase.REPLY, last.code if accepted else 250,
                      last.detail, refused, accepted=accepted)  # fmt: skip
    return all_refused(refused)  # nobody has it: any 4xx retries it, else it fails


def _failed(failure: Result, left: list[str], accepted, refused, delivered: bool) -> Result:
    """A transaction failed as a whole (connection, MAIL, DATA, or the final reply)."""
    failure.accepted = accepted
    failure.refused = refused
    if failure.outcome is not Outcome.PERMANENT:
        failure.pending = left  # retried later, for these recipients only
        return failure
    if not (accepted or delivered):
        return failure
    refusal = [failure.code, failure.detail]  # others have it: the rest are refused
    failure.refused = {**refused, **{r: refusal for r in left}}
    return Result(Outcome.SENT, failure.phase, failure.code, failure.detail, failure.refused,
                  accepted=accepted)  # fmt: skip
