"""gunicorn settings for the API; values come from the service configuration.

gunicorn executes this file at start and again on SIGHUP, so `supervisorctl signal HUP web`
re-reads the configuration (log level, tokens, limits) and replaces the workers gracefully:
the listening socket stays open, new workers take new connections, old workers finish the
request in hand.  `supervisorctl restart web` instead stops gunicorn (in-flight requests
finish within graceful_timeout) and starts a new one; connections attempted in between are
refused, so prefer HUP for a reload.
"""

import sys

from common import pids
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
# gunicorn's gevent worker with deadlines and JSON errors (web/front.py): a connection is a
# greenlet, so slow or idle clients cannot take the turn of a normal one.  Measured with
# make bench (slow_clients): 20 slow-header + 20 slow-body clients stopped every enqueue of
# the gthread worker (2 x 1 thread: 0 of 20 answered; 2 x 32 threads: 20, but 0 of 20 with
# 300 slow clients); with this worker all 20 are answered, the slowest in tens of ms
worker_class = "web.front.ApiWorker"
# connections one worker holds at once; with 2 workers a thousand, and within the usual
# limit of 1024 open files per process
worker_connections = 500
# seconds a request head may take to arrive whole, counted from the connection opening or
# the previous answer; so also how long an idle kept-alive connection stays open
keepalive = 10
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


def when_ready(server):
    """The master records its pid once it listens (``common.pids``: one stack per var dir)."""
    pids.record(_config.run_dir, "web")


def on_exit(server):
    pids.forget(_config.run_dir, "web")


def post_fork(server, worker):
    """Each worker records its pid too: it outlives a killed master by up to a second."""
    pids.record(_config.run_dir, f"web-worker-{worker.pid}")


def child_exit(server, worker):
    """A worker's multiprocess metric files stop counting as live once it has exited."""
    mark_dead(worker.pid)
    pids.forget(_config.run_dir, f"web-worker-{worker.pid}", worker.pid)
