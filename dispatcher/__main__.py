"""``python -m dispatcher``: claim, build, send and record until SIGTERM (SPEC §6)."""

import functools
import logging
import sys

import apsw

from common import db, metrics, store, wakeup
from common.config import ConfigError, load_config
from common.logs import fields, setup_logging
from common.process import Heartbeat, Signals, process_name, run_forever
from common.ratelimit import Ledger
from dispatcher.attachments import Fetcher
from dispatcher.core import Dispatcher
from dispatcher.smtp import Pool

logger = logging.getLogger("dispatcher")


def main() -> int:
    """Wire config, database, ledger, SMTP pool and signals to a Dispatcher; the exit code."""
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"dispatcher: configuration error: {exc}", file=sys.stderr)
        return 2
    name = process_name(wakeup.DISPATCHER)
    setup_logging(config.log_level, name)
    try:
        conn = db.connect(config.database, config.synchronous)
    except (apsw.Error, OSError) as exc:
        print(f"dispatcher: cannot open database {config.database}: {exc}", file=sys.stderr)
        return 1
    signals = Signals()
    signals.install()
    waiter = wakeup.Waiter(config.run_dir, wakeup.DISPATCHER, name)
    ledger = Ledger(config.ratelimit_dir, functools.partial(store.send_starts, conn))
    beat = Heartbeat(conn, name, wakeup.DISPATCHER)
    dispatcher = Dispatcher(conn, config, ledger=ledger, pool=Pool(), fetcher=Fetcher(config),
                            name=name, should_stop=lambda: signals.stop,
                            heartbeat=beat)  # fmt: skip

    def reload() -> None:  # SIGHUP: re-read the configuration; keep the old one if bad
        try:
            dispatcher.reconfigure(load_config())
        except ConfigError as exc:
            logger.error(fields(event="reload_refused", reason=exc))

    logger.info(fields(event="started", database=config.database))
    try:
        return run_forever(dispatcher.turn, waiter.wait, dispatcher.idle_seconds, signals,
                           reload, beat)  # fmt: skip
    finally:
        dispatcher.close()
        waiter.close()
        metrics.at_exit()
        logger.info(fields(event="stopped"))


if __name__ == "__main__":
    sys.exit(main())
