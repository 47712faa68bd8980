"""gunicorn settings for the API; values come from the service configuration.

gunicorn executes this file at start and again on SIGHUP, so `supervisorctl signal HUP web`
re-reads the configuration (log level, tokens, limits) and replaces the workers gracefully:
the listening socket stays open, new workers take new connections, old workers finish the
request in hand.  `supervisorctl restart web` instead stops gunicorn (in-flight requests
finish within graceful_timeout) and starts a new one; connections attempted in between are
refused, so prefer HUP for a reload.
"""

import sys

from common.config import ConfigError, load_config

# imported in the master on purpose: workers inherit it at fork rather than each paying the
# peak of importing it (make bench, rss: ~2 MiB less per worker, the master ~2.6 MiB more)
from common.metrics import mark_dead

try:
    _config = load_config()
except ConfigError as exc:  # one line naming the key, not a traceback
    sys.exit(f"configuration error: {exc}")

bind = f"{_config.host}:{_config.port}"
workers = _config.workers
# gthread with one thread: clients keep their connections alive between enqueues (sync
# workers close every connection), while each worker still serves one request at a time on
# its one database connection
worker_class = "gthread"
threads = 1
keepalive = 75  # seconds an idle client connection stays open (longer than most LBs' 60 s)
proc_name = "asyncmail-web"  # how the master and workers show in ps
graceful_timeout = 20  # finish in-flight requests on TERM/HUP; below supervisord's stopwaitsecs
timeout = 30  # a worker stuck this long is killed and replaced
# no max_requests: workers are not recycled, so multiprocess metric files stay few
# gunicorn's own access log stays off: `[logging] access_log = true` has the app write one
# logfmt line per request instead (web/app.py), in the format of every other line
accesslog = None
errorlog = "-"  # stderr, which supervisord writes to var/log/web.log
loglevel = _config.log_level.lower()
# gunicorn's control socket (gunicorn >= 25) defaults to ~/.gunicorn/, shared by every
# instance of the user; keep ours with the other sockets of this installation
control_socket = str(_config.run_dir / "gunicorn.ctl")
# each worker imports the app itself and opens its own database after the fork.  Preloading
# was measured (make bench, rss): each worker's peak RSS fell by ~4 MiB and the tree's
# proportional total by ~9 MiB, but the master grew by ~18 MiB (the sum of peaks rose by ~8)
# and a SIGHUP would no longer re-read the configuration: a preloaded app is loaded once
preload_app = False


def child_exit(server, worker):
    """A worker's multiprocess metric files stop counting as live once it has exited."""
    mark_dead(worker.pid)
