"""Fair scheduling with real dispatcher processes: no account starves another, priority wins.

The bounds below come from how a claim works (common/queue.py): each claim takes at most
``batch_size_per_account`` ready rows per account, and sends the rows it holds in (priority,
age) order.  Rows already claimed by a dispatcher are sent before it claims again, so a newly
urgent message can wait behind at most the claims in hand.
"""

from __future__ import annotations

import time

import pytest

from common import store
from tests.support import procs
from tests.support.db import enqueue
from tests.support.dispatchers import dispatchers, wait_received
from tests.support.factories import message

PROCESSES = 3
BATCH = 50  # the default batch_size_per_account


def accounts(conn, peer, **limits_by_account) -> None:
    for account_id, limits in limits_by_account.items():
        store.accounts.upsert(conn, "default", peer.account(account_id, **limits), int(time.time()))


@pytest.mark.slow
def test_a_small_account_is_served_before_a_busy_one_is_done(conn, config, smtp_server):
    """500 queued for 'busy', then 5 for 'small': the 5 arrive before the 500 are done.

    The small account's rows are in the first claim that reaches them; before that claim
    sends them, each dispatcher can at most send one batch of 'busy' rows already in hand,
    plus the 'busy' rows ahead of them (older) in their own claim.
    """
    peer = smtp_server()
    accounts(conn, peer, busy={}, small={})
    enqueue(conn, config, *[message(f"busy{n}", "busy") for n in range(500)], now=time.time())
    enqueue(conn, config, *[message(f"small{n}", "small") for n in range(5)], now=time.time())
    with dispatchers(config, PROCESSES):
        wait_received(peer, 505, timeout=60)
    order = peer.subjects()
    assert sorted(order) == sorted(
        [f"busy{n}" for n in range(500)] + [f"small{n}" for n in range(5)]
    )
    small_done = max(order.index(f"small{n}") for n in range(5))
    busy_before = sum(1 for i in order[:small_done] if i.startswith("busy"))
    assert busy_before < 500
    assert busy_before <= (PROCESSES + 1) * BATCH


@pytest.mark.slow
def test_a_rate_limited_account_does_not_hold_up_the_others(conn, config, smtp_server):
    """'slow' is limited to 5/s with 500 queued: 'fast' still goes out at once.

    A dispatcher that meets the limit defers that account's rows and carries on with the
    rest of its claim; it never sleeps on a rate limit.  At 5 per second, 'slow' can only
    have sent a handful by the time the 5 'fast' messages are through.
    """
    peer = smtp_server()
    accounts(conn, peer, slow={"limit_per_second": 5}, fast={})
    enqueue(conn, config, *[message(f"slow{n}", "slow") for n in range(500)], now=time.time())
    enqueue(conn, config, *[message(f"fast{n}", "fast") for n in range(5)], now=time.time())
    with dispatchers(config, PROCESSES):
        procs.wait_for(
            lambda: sum(1 for i in peer.subjects() if i.startswith("fast")) == 5,
            message="the 5 fast messages",
        )
        order = peer.subjects()
    slow_before = sum(1 for i in order if i.startswith("slow"))
    assert slow_before <= 10  # two seconds' worth of the slow account's limit


@pytest.mark.slow
def test_immediate_is_never_queued_behind_low(conn, config, smtp_server):
    """Immediate messages enqueued while low ones flow overtake every low row not yet claimed.

    With batch_size_per_account=10, each dispatcher holds at most 10 'low' rows of each
    account when the immediate ones arrive, and another dispatcher's next claim may run
    alongside the one that took the immediate rows: at most 2 x PROCESSES x 2 x 10 low
    messages can arrive between the enqueue and the last immediate one, of the 600 queued.
    """
    peer = smtp_server()
    accounts(conn, peer, a={}, b={})
    low = [message(f"low-{acct}{n}", acct, priority="low") for acct in "ab" for n in range(300)]
    enqueue(conn, config, *low, now=time.time())
    with dispatchers(config, PROCESSES, batch_size_per_account=10):
        wait_received(peer, 30)
        already = len(peer.received)
        urgent = [
            message(f"now-{acct}{n}", acct, priority="immediate") for acct in "ab" for n in range(3)
        ]
        enqueue(conn, config, *urgent, now=time.time())
        wait_received(peer, 606, timeout=60)
    order = peer.subjects()
    last_urgent = max(order.index(m["id"]) for m in urgent)
    low_overtaking = sum(1 for i in order[already:last_urgent] if i.startswith("low"))
    assert low_overtaking <= 2 * PROCESSES * 2 * 10
    assert any(i.startswith("low") for i in order[last_urgent:])  # low rows were overtaken
