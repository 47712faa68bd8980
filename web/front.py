"""The API's front door: gunicorn's gevent worker with deadlines a slow client cannot stretch.

``etc/gunicorn.conf.py`` names ``web.front.ApiWorker``.  Each connection is a greenlet, so
hundreds of idle or slow connections cost memory, not the turn of a normal client (a thread
per connection ran out at 2: docs/operations.md has the figures).  On top of gevent's worker:

  head      a request head must be whole within ``keepalive`` seconds of the connection
            opening or of the previous answer (gunicorn's gevent worker times the head
            read with it; etc/gunicorn.conf.py sets it); a stopping worker closes its idle
            connections at once instead of keeping them open until they time out (one whose
            next request is already arriving is answered, with ``Connection: close``)
  body      a body must arrive at ``BODY_MIN_RATE`` bytes/s after ``BODY_GRACE_SECONDS``,
            or the request answers 408 and the connection is closed
  answer    each piece of an answer must be taken by the client within
            ``ANSWER_GRACE_SECONDS`` plus its size at ``ANSWER_MIN_RATE``, or the connection
            is dropped: a client that stops reading would otherwise hold its request open
            for ever, and with it the read transaction of a streamed listing, which keeps
            the WAL from starting again (docs/operations.md, "Bounded WAL")
  refusals  an answer carrying ``Connection: close`` (401 before the body is read, 408,
            413) closes the connection instead of reading the rest of the body
  errors    gunicorn's own answers to malformed requests (400, 414, 431, ...) are the API's
            JSON ``{"ok": false, "error": ...}``, not HTML
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import json
import logging
import select
import socket
import time
from collections.abc import Iterator

import gevent
from gunicorn import util
from gunicorn.http.errors import NoMoreData, ParseException
from gunicorn.workers.ggevent import GeventWorker
from werkzeug.exceptions import BadRequest, RequestTimeout

from common.logs import fields

logger = logging.getLogger(__name__)

BODY_GRACE_SECONDS = 10.0  # a body's first bytes may take this long (a slow link, TLS, ...)
BODY_MIN_RATE = 16 * 1024  # bytes/s a body must keep up after the grace: 25 MiB in ~27 min
CHUNK = 64 * 1024  # most bytes one timed read asks for
ANSWER_GRACE_SECONDS = 10.0  # a piece of an answer may wait this long for a reader
ANSWER_MIN_RATE = 16 * 1024  # bytes/s a reader must keep up, beyond the grace

ERROR_SENTENCES = {  # gunicorn's refusals of a malformed request, as sentences
    400: "Malformed HTTP request ({detail}); the connection is closed.",
    414: "The request line is too long ({detail}); shorten the URL.",
    417: "Expectation not supported ({detail}).",
    431: "The request head is too large ({detail}); send fewer or shorter header fields.",
    501: "Not implemented ({detail}).",
}


class DeadlineInput:
    """``wsgi.input`` whose every read must finish by the body's deadline, else 408.

    A body that breaks its framing (bad chunk sizes, the client gone) is a 400; either way
    ``broken`` is set and the connection is closed after the answer.
    """

    def __init__(self, stream, started: float):
        self.stream = stream
        self.started = started
        self.received = 0
        self.broken = False

    def _deadline(self) -> float:
        return self.started + BODY_GRACE_SECONDS + self.received / BODY_MIN_RATE

    def _timed(self, read, size: int) -> bytes:
        timer = gevent.Timeout(max(self._deadline() - time.monotonic(), 0.001))
        timer.start()
        try:
            data = read(size)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            self.broken = True
            raise RequestTimeout(
                f"The request body arrived slower than {BODY_MIN_RATE} bytes per second; "
                "the connection is closed."
            ) from None
        except (ParseException, NoMoreData) as exc:
            self.broken = True
            raise BadRequest(f"The request body is malformed or incomplete ({exc}).") from None
        finally:
            timer.cancel()
        self.received += len(data)
        return data

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative), read in timed chunks."""
        parts = []
        wanted = -1 if size is None or size < 0 else size
        while wanted != 0:
            data = self._timed(self.stream.read, CHUNK if wanted < 0 else min(CHUNK, wanted))
            if not data:
                break
            parts.append(data)
            wanted = wanted if wanted < 0 else wanted - len(data)
        return b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        return self._timed(self.stream.readline, CHUNK if size is None or size < 0 else size)

    def __iter__(self):
        return iter(self.readline, b"")


class SlowReader(OSError):
    """The client took a piece of the answer too slowly: the connection is dropped.

    An EPIPE, so that gunicorn closes the connection as it does for a client that went
    away, without a traceback; ``timed_answer`` logs the event itself.
    """

    def __init__(self):
        super().__init__(errno.EPIPE, "the client read the answer too slowly")


def timed_answer(answer, path: str) -> Iterator[bytes]:
    """The app's answer, each piece written to the client under its deadline."""
    try:
        for piece in answer:
            seconds = ANSWER_GRACE_SECONDS + len(piece) / ANSWER_MIN_RATE
            timer = gevent.Timeout(seconds, SlowReader)
            began = time.monotonic()
            timer.start()
            try:
                yield piece  # gunicorn writes it meanwhile: the timer cuts a blocked write
            except GeneratorExit:
                if time.monotonic() - began >= seconds:
                    logger.warning(fields(event="slow_reader", path=path, seconds=seconds))
                raise
            finally:
                timer.cancel()
    finally:
        close = getattr(answer, "close", None)
        if close is not None:
            close()


def with_deadlines(app):
    """The WSGI app with a timed body and answer, and ``Connection: close`` honoured."""

    def guarded(environ, start_response):
        body = environ["wsgi.input"] = DeadlineInput(environ["wsgi.input"], time.monotonic())

        def start(status, headers, exc_info=None):
            # gunicorn drops hop-by-hop headers an app sets; it closes when told to directly
            if body.broken or ("Connection", "close") in headers:
                start_response.__self__.force_close()
            return start_response(status, headers, exc_info)

        return timed_answer(app(environ, start), environ.get("PATH_INFO", ""))

    return guarded


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's error answer (``util.write_error``) in the API's JSON shape."""
    detail = mesg or reason
    sentence = ERROR_SENTENCES.get(status_int, "{detail}.").format(detail=detail)
    body = json.dumps({"ok": False, "error": sentence}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


class ApiWorker(GeventWorker):
    """gunicorn's gevent worker with the deadlines and JSON errors of this module."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clients: dict = {}  # greenlet -> the client socket it serves
        self.waiting: set = set()  # greenlets waiting for a request head

    def handle(self, listener, client, addr):
        me = gevent.getcurrent()
        self.clients[me] = client
        try:
            super().handle(listener, client, addr)
        finally:
            del self.clients[me]

    @contextlib.contextmanager
    def timeout_ctx(self):
        """The wait for a request head: at most ``keepalive`` s, none once stopping."""
        me = gevent.getcurrent()
        self.waiting.add(me)
        try:
            if not self.alive:
                self._hang_up(me)
            with gevent.Timeout(self.cfg.keepalive, False):
                yield
        finally:
            self.waiting.discard(me)

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        gevent.spawn(self._hang_up_waiting)  # not in the signal handler itself

    def _hang_up_waiting(self) -> None:
        for greenlet in list(self.waiting):
            self._hang_up(greenlet)

    def _hang_up(self, greenlet) -> None:
        """Close an idle connection: its head wait ends as if the client had left.

        One whose next request is already arriving is left alone: it is answered, with
        ``Connection: close`` since the worker is stopping.
        """
        client = self.clients.get(greenlet)
        # ValueError: the connection ended and was closed meanwhile (its fileno is -1)
        with contextlib.suppress(OSError, ValueError):
            if client is not None and not select.select([client], [], [], 0)[0]:
                # at the kernel: gevent's own shutdown() cancels the waiting read with an
                # error gunicorn logs as a traceback; this way the read just sees the end
                kernel_socket = _socket.socket(fileno=client.fileno())
                try:
                    kernel_socket.shutdown(socket.SHUT_RDWR)
                finally:  # the fd stays the connection's, closed by its owner, never here
                    kernel_socket.detach()

    def init_process(self):
        util.write_error = write_json_error  # its one caller is Worker.handle_error
        super().init_process()

    def load_wsgi(self):
        super().load_wsgi()
        self.wsgi = with_deadlines(self.wsgi)
