"""gunicorn entry point: ``gunicorn -c etc/gunicorn.conf.py web.wsgi:app``."""

import sys

from common.config import ConfigError, load_config
from common.logs import setup_logging
from web.app import create_app

APP_LOAD_ERROR = 4  # gunicorn's exit code for "the app cannot load": the master stops too

try:
    _config = load_config()
except ConfigError as exc:
    print(f"configuration error: {exc}", file=sys.stderr, flush=True)
    sys.exit(APP_LOAD_ERROR)
setup_logging(_config.log_level)
app = create_app(_config)
