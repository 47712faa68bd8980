"""A requests adapter that hands each request's connection to a ``Guard`` (common/guard.py).

requests' timeouts bound each read, so a peer that drips its headers or body one byte at a
time holds a request for ever.  Handing the connection a request uses (new, or kept alive
from an earlier request) to ``Guard.track`` before it is used lets the guard's deadline
shut its socket down, and the blocked call fails at once.
Imported only where requests already is: the reporter, and the dispatcher's first URL
attachment.
"""

from __future__ import annotations

from collections.abc import Callable

from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class TrackingAdapter(HTTPAdapter):
    """requests' adapter, with pools that hand every connection they lend to ``track``."""

    def __init__(self, track: Callable[[object], None]):
        self.track = track  # set first: HTTPAdapter.__init__ builds the pool manager
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _tracking(HTTPConnectionPool, self.track),
            "https": _tracking(HTTPSConnectionPool, self.track),
        }


def _tracking(pool_class: type, track: Callable[[object], None]) -> type:
    """A urllib3 pool class whose lent connections go to ``track`` (their ``sock`` is cut)."""

    class TrackingPool(pool_class):
        def _get_conn(self, timeout=None):
            connection = super()._get_conn(timeout)
            track(connection)
            return connection

    return TrackingPool
