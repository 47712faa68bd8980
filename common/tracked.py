"""A requests adapter that hands each request's connection to a ``Guard`` (common/guard.py).

requests' timeouts bound each read, so a peer that drips its headers or body one byte at a
time holds a request for ever.  Handing the connection a request uses (new, or kept alive
from an earlier request) to ``Guard.track`` before it is used lets the guard's deadline
shut its socket down, and the blocked call fails at once.
Imported only where requests already is: the reporter, and the dispatcher's first URL
attachment (its S3 client's pools are wrapped the same way: dispatcher/attachments.py).
"""

from __future__ import annotations

from collections.abc import Callable

from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from common.guard import tracking_pool


class TrackingAdapter(HTTPAdapter):
    """requests' adapter, with pools that hand every connection they lend to ``track``."""

    def __init__(self, track: Callable[[object], None]):
        self.track = track  # set first: HTTPAdapter.__init__ builds the pool manager
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": tracking_pool(HTTPConnectionPool, self.track),
            "https": tracking_pool(HTTPSConnectionPool, self.track),
        }
