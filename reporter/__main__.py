"""``python -m reporter``: post delivery reports upstream until SIGTERM (SPEC §7)."""

from __future__ import annotations

import logging
import sys
import time

import apsw

from common import db, metrics, wakeup
from common.config import ConfigError, load_config
from common.logs import fields, setup_logging
from common.process import Heartbeat, Signals, process_name, run_forever
from reporter.reporter import Reporter

logger = logging.getLogger("reporter")


def main() -> int:
    """Wire config, database, wake-ups and signals to the Reporter; return the exit code."""
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"reporter: configuration error: {exc}", file=sys.stderr)
        return 2
    name = process_name("reporter")
    setup_logging(config.log_level, name)
    try:
        conn = db.connect(config.database, config.synchronous)
    except (apsw.Error, OSError) as exc:
        logger.error(fields(event="database_unavailable", path=config.database, reason=exc))
        return 1
    signals = Signals()
    signals.install()
    waiter = wakeup.Waiter(config.run_dir, wakeup.REPORTER, name)
    reporter = Reporter(config, conn, time.time())

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
        return run_forever(turn, waiter.wait, idle, signals, reporter.reload, beat)
    finally:
        reporter.close()
        waiter.close()
        metrics.at_exit()


if __name__ == "__main__":
    sys.exit(main())
