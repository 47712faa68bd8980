"""The REST API's application factory; gunicorn serves ``web.wsgi:app``.

Every start-up path (gunicorn, the test client, any caller of ``create_app``) goes through
``create_app``, which installs authentication, JSON error answers and request metrics before
any route exists, so no configuration can produce an unauthenticated app, and errors answer
JSON.  The one HTML room is the status page (``web.ui``, /ui), behind its session cookie.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from flask import Flask, Response, g, jsonify, request

from common import metrics
from common.config import Config, load_config
from common.logs import fields
from web import (
    accounts,
    auth,
    commands,
    db,
    errors,
    messages,
    service,
    suppressions,
    tenants,
    ui,
)

access_logger = logging.getLogger("web.access")

BLUEPRINTS = (
    service.blueprint,
    messages.blueprint,
    commands.blueprint,
    accounts.blueprint,
    suppressions.blueprint,
    tenants.blueprint,
    ui.blueprint,
)


class ApiFlask(Flask):
    """Flask whose automatic OPTIONS answer is JSON like every other answer."""

    def make_default_options_response(self) -> Response:
        allowed = sorted(super().make_default_options_response().allow)
        response = jsonify(ok=True, allow=allowed)
        response.headers["Allow"] = ", ".join(allowed)
        return response


def create_app(config: Config | None = None, **overrides) -> Flask:
    """Build the API for one configuration; every start-up path goes through here."""
    if config is None:
        config = load_config(**overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    app = ApiFlask(__name__)
    app.config["ASYNCMAIL"] = config
    # One byte more than allowed: werkzeug silently truncates a streamed (chunked) body at
    # this limit, so the routes read up to it and answer 413 for anything past the real one.
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes + 1
    app.json.sort_keys = False
    app.before_request(_start_timer)
    app.before_request(auth.authenticate)
    app.after_request(_count_request)
    sample = metrics.ProcessSampler("web")
    sample()  # this worker's series exist before its first request
    app.after_request(_sample_process(sample))
    if config.access_log:
        app.after_request(_log_request)
    errors.init_app(app)
    db.init_app(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    return app


def _start_timer():
    g.started = time.perf_counter()


def _count_request(response: Response) -> Response:
    route = request.url_rule.rule if request.url_rule else "unmatched"
    metrics.HTTP_REQUESTS.labels(route, str(response.status_code)).inc()
    if "started" in g:
        metrics.HTTP_SECONDS.labels(route).observe(time.perf_counter() - g.started)
    return response


def _sample_process(sample):
    def after(response: Response) -> Response:
        sample()  # a worker's memory and files, at most every few seconds
        return response

    return after


def _log_request(response: Response) -> Response:
    """[logging] access_log: one line per request; never the query string or a header."""
    elapsed = time.perf_counter() - g.started if "started" in g else 0.0
    access_logger.info(
        fields(
            event="request",
            method=request.method,
            path=request.path,
            status=response.status_code,
            bytes=response.content_length if response.content_length is not None else "-",
            ms=f"{elapsed * 1000:.2f}",
            remote=request.remote_addr or "-",
        )
    )
    return response
