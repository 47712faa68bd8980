"""``python -m dispatcher``: claim, build, send and record until SIGTERM (SPEC §6)."""

import logging
import sys

from common import metrics, wakeup
from common.guard import Guard
from common.logs import fields
from common.process import Heartbeat, Signals, open_process, run_forever
from common.ratelimit import Ledger
from dispatcher import metering
from dispatcher.attachments import Fetcher
from dispatcher.core import Dispatcher, Jammed
from dispatcher.pool import Pool

logger = logging.getLogger("dispatcher")


def main() -> int:
    """Wire config, database, ledger, SMTP pool and signals to a Dispatcher; the exit code."""
    config, name, conn = open_process(wakeup.DISPATCHER)
    signals = Signals()
    signals.install()
    waiter = wakeup.Waiter(config.run_dir, wakeup.DISPATCHER, name)
    ledger = Ledger(config.ratelimit_dir, metering.history(conn))
    beat = Heartbeat(conn, name, wakeup.DISPATCHER)
    guard = Guard()  # one watchdog thread: deadlines of SMTP and fetches, lease renewal
    dispatcher = Dispatcher(conn, config, ledger=ledger, pool=Pool(guard=guard),
                            fetcher=Fetcher(config, guard=guard), name=name,
                            should_stop=lambda: signals.stop, heartbeat=beat,
                            guard=guard)  # fmt: skip

    logger.info(fields(event="started", database=config.database))
    try:
        return run_forever(dispatcher.turn, waiter.wait, dispatcher.idle_seconds, signals,
                           dispatcher.reconfigure, dispatcher.beat)  # fmt: skip
    except Jammed as exc:  # supervisord restarts it with a fresh connection
        logger.error(fields(event="jammed", reason=exc))
        return 1
    finally:
        dispatcher.close()
        waiter.close()
        metrics.at_exit()
        logger.info(fields(event="stopped"))


if __name__ == "__main__":
    sys.exit(main())
