"""``python -m reporter``: post delivery reports upstream until SIGTERM (SPEC §7)."""

from __future__ import annotations

import logging
import sys
import time

from common import metrics, store, wakeup
from common.logs import fields
from common.process import Heartbeat, Signals, open_process, run_forever
from reporter.reporter import Reporter
from reporter.threads import Threads

logger = logging.getLogger("reporter")


def main() -> int:
    """Wire config, database, wake-ups and signals to the Reporter; return the exit code."""
    config, name, conn = open_process(wakeup.REPORTER)
    signals = Signals()
    signals.install()
    waiter = wakeup.Waiter(config.run_dir, wakeup.REPORTER, name)
    streams = Threads(lambda: store.db.connect(config.database, config.synchronous, migrate=False))
    reporter = Reporter(config, conn, time.time(), runner=streams)

    def turn() -> bool:
        try:
            return reporter.run_once(time.time())
        except Exception:  # the loop boundary: log it, sleep, try again
            logger.exception(fields(event="turn_failed"))
            return False

    def idle() -> float:
        return reporter.idle_seconds(time.time())

    beat = Heartbeat(conn, name, wakeup.REPORTER)
    try:
        return run_forever(turn, waiter.wait, idle, signals, reporter.configure, beat)
    finally:
        reporter.close()
        streams.close()
        waiter.close()
        metrics.at_exit()


if __name__ == "__main__":
    sys.exit(main())
