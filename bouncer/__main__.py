"""``python -m bouncer``: turn the bounce mailbox's notifications into events (docs/bounces.md)."""

from __future__ import annotations

import logging
import sys
import time

from bouncer.bouncer import Bouncer
from common import metrics
from common.logs import fields
from common.process import Heartbeat, Signals, open_process, run_forever

logger = logging.getLogger("bouncer")
KIND = "bouncer"


def main() -> int:
    """Wire config, database and signals to the Bouncer; return the exit code."""
    config, name, conn = open_process(KIND)
    if not config.bounces_enabled:
        logger.error(fields(event="not_configured", reason="[bounces] imap_host is not set"))
        return 2
    signals = Signals()
    signals.install()
    bouncer = Bouncer(conn, config, should_stop=lambda: signals.stop)

    def turn() -> bool:
        try:
            return bouncer.run_once(time.time())
        except Exception:  # the loop boundary: log it, wait, try again
            logger.exception(fields(event="turn_failed"))
            return False

    def idle() -> float:
        return bouncer.idle_seconds(time.time())

    beat = Heartbeat(conn, name, KIND)
    logger.info(fields(event="started", host=config.imap_host, folder=config.imap_folder))
    try:
        return run_forever(turn, bouncer.wait, idle, signals, bouncer.reconfigure, beat)
    finally:
        bouncer.close()
        metrics.at_exit()
        logger.info(fields(event="stopped"))


if __name__ == "__main__":
    sys.exit(main())
