"""gunicorn entry point: ``gunicorn -c etc/gunicorn.conf.py web.wsgi:app``."""

from common.logs import setup_logging
from web.app import create_app

app = create_app()
setup_logging(app.config["ASYNCMAIL"].log_level)
