"""The dispatcher's part in bounce handling (docs/bounces.md), beside the send path:

* the VERP envelope sender ``bounce+<token>@verp_domain`` while ``[bounces] verp_domain`` is
  set (a message whose client chose its own ``return_path`` keeps it);
* with ``[delivery] suppression = on``: suppressed recipients are taken out of the envelope
  before the send and listed in ``refused`` as ``suppressed`` after it, a message left with
  nobody to send to ends ``error`` without an SMTP connection, and a recipient the server
  refuses with a dead-address status (5.1.x) is added to the list.
"""

from __future__ import annotations

import dataclasses
import logging

from common import metrics, store
from common.addresses import verp_address
from common.config import Config
from common.enums import Next, Outcome
from common.logs import fields
from common.store.claims import Attempt, Transition
from common.suppression import SUPPRESSED, enhanced_status, kills_address
from dispatcher.mime import Envelope
from dispatcher.payload import Message
from dispatcher.smtp import Result

logger = logging.getLogger(__name__)


def with_verp(envelope: Envelope, row: dict, msg: Message, config: Config) -> Envelope:
    """The envelope with its VERP sender, when VERP is on and the message has a token."""
    if not config.verp_domain or not row.get("verp_token") or msg.return_path:
        return envelope
    return dataclasses.replace(envelope, sender=verp_address(row["verp_token"], config.verp_domain))


def screen(conn, tenant: str, envelope: Envelope, config: Config) -> tuple[Envelope, list[str]]:
    """The envelope without the recipients on the tenant's list, and those recipients."""
    if not config.suppression:
        return envelope, []
    suppressed = store.suppressions.among(conn, tenant, envelope.recipients)
    if not suppressed:
        return envelope, []
    kept = [r for r in envelope.recipients if r not in suppressed]
    return dataclasses.replace(envelope, recipients=kept), sorted(suppressed)


def all_suppressed(row: dict, suppressed: list[str], now: float) -> Transition:
    """SENDING -> ERROR: every recipient is suppressed, so nothing is sent."""
    detail = "all recipients suppressed: " + ", ".join(suppressed)
    attempt = Attempt(row["id"], row["account_id"], now, Outcome.SUPPRESSED, None, detail,
                      tenant_id=row["tenant_id"])  # fmt: skip
    refused = {address: [None, SUPPRESSED] for address in suppressed}
    _count(row, suppressed)
    return Transition(attempt, Next.ERROR, now, error=detail, refused=refused)


def after_send(conn, row: dict, result: Result, suppressed: list[str], config: Config, now):
    """The result with the suppressed recipients in ``refused``; dead addresses learnt."""
    if config.suppression:
        _learn(conn, row["tenant_id"], result.refused, now)
    if not suppressed:
        return result
    _count(row, suppressed)
    refused = {**result.refused, **{address: [None, SUPPRESSED] for address in suppressed}}
    return dataclasses.replace(result, refused=refused)


def _learn(conn, tenant: str, refused: dict[str, list], now: float) -> None:
    """Suppress (on the tenant's list) each recipient the server refused as a dead address
    (5xx with 5.1.x)."""
    for address, (code, text) in refused.items():
        status = enhanced_status(text)
        if code is None or code // 100 != 5 or not kills_address(status):
            continue
        store.suppressions.add(conn, tenant, address, "hard_bounce", f"{code} {status}", text, now)
        logger.info(fields(event="suppressed", tenant=tenant, address=address,
                           reason="hard_bounce", status=f"{code} {status}"))  # fmt: skip


def _count(row: dict, suppressed: list[str]) -> None:
    series = metrics.labels_of(row["tenant_id"], row["account_id"])
    metrics.SUPPRESSED_RECIPIENTS.labels(*series).inc(len(suppressed))
