"""The ``asyncmail`` console script: operator chores without the web process."""

from __future__ import annotations

import argparse
import shutil
import sys

from common import db
from common.config import ConfigError, load_config


def cmd_init(config, args) -> int:
    """Create var/ (mode 0700), the database, and an empty metrics directory."""
    for directory in (config.var_dir, config.run_dir, config.log_dir, config.ratelimit_dir):
        directory.mkdir(parents=True, mode=0o700, exist_ok=True)
    shutil.rmtree(config.metrics_dir, ignore_errors=True)
    config.metrics_dir.mkdir(mode=0o700)
    db.connect(config.database, config.synchronous).close()
    print(f"ready: database={config.database} var_dir={config.var_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asyncmail", description=__doc__)
    parser.add_argument("--config", help="INI file (default: etc/asyncmail.ini or $ASYNCMAIL_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help=cmd_init.__doc__).set_defaults(func=cmd_init)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return args.func(config, args)


if __name__ == "__main__":
    sys.exit(main())
