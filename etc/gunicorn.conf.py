"""gunicorn settings for the API; values come from the service configuration."""

from common.config import load_config
from common.metrics import mark_dead

_config = load_config()

bind = f"{_config.host}:{_config.port}"
workers = _config.workers
worker_class = "sync"  # each request is a few milliseconds of SQLite work; no I/O waits
keepalive = 75  # clients keep connections open between enqueues (longer than most LBs' 60 s)
graceful_timeout = 20  # finish in-flight requests on TERM; below supervisord's stopwaitsecs
timeout = 30  # a worker stuck this long is killed and replaced
accesslog = None  # request metrics replace an access log; errors still go to stderr
errorlog = "-"
preload_app = False  # each worker opens its own database connection after fork


def child_exit(server, worker):
    """A worker's multiprocess metric files stop counting as live when it exits."""
    mark_dead(worker.pid)
