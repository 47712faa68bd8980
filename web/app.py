"""The REST API's application factory; gunicorn serves ``web.wsgi:app``.

Every start-up path (gunicorn, the test client, any caller of ``create_app``) goes through
``create_app``, which installs authentication, JSON error answers and request metrics before
any route exists, so no configuration can produce an unauthenticated or HTML-answering app.
"""

from __future__ import annotations

import dataclasses
import time

from flask import Flask, Response, g, jsonify, request

from common import metrics
from common.config import Config, load_config
from web import accounts, auth, commands, db, errors, messages, service

DEFAULT_ACCOUNT = "default"  # metric label of the implicit [smtp] account, as in the reference
REFERENCE_COUNTERS = (metrics.SENT, metrics.ERRORS, metrics.DEFERRED, metrics.RATE_LIMITED)
BLUEPRINTS = (service.blueprint, messages.blueprint, commands.blueprint, accounts.blueprint)


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
    errors.init_app(app)
    db.init_app(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    for counter in REFERENCE_COUNTERS:  # the reference's names show before the first send
        counter.labels(DEFAULT_ACCOUNT)
    return app


def _start_timer():
    g.started = time.perf_counter()


def _count_request(response: Response) -> Response:
    route = request.url_rule.rule if request.url_rule else "unmatched"
    metrics.HTTP_REQUESTS.labels(route, str(response.status_code)).inc()
    if "started" in g:
        metrics.HTTP_SECONDS.labels(route).observe(time.perf_counter() - g.started)
    return response
