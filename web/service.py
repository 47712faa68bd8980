"""The service itself: health, status, metrics and the API's own description."""

from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify

from common import metrics, operations, store
from web.caller import admin_only, scope
from web.db import get_config, get_conn

blueprint = Blueprint("service", __name__)


@blueprint.get("/health")
def health():
    """200 while the database answers, 503 otherwise; needs no token."""
    try:
        store.db.ping(get_conn())
    except Exception as exc:  # any database failure means unhealthy
        return jsonify(ok=False, status="unavailable", error=f"Database unavailable: {exc}"), 503
    return jsonify(ok=True, status="ok")


@blueprint.get("/status")
def status():
    """Scheduler switch, counts by status and priority, process heartbeats: of the caller's
    tenant, or of the whole service with a breakdown per tenant (the admin naming none)."""
    return jsonify(ok=True, **operations.status(get_conn(), get_config(), time.time(), scope()))


@blueprint.get("/metrics")
@admin_only  # every tenant's series: the operator's, unless metrics_public
def scrape():
    """Prometheus text: every process's counters plus database gauges."""
    body = metrics.render(get_conn, get_config())
    return Response(body, mimetype="text/plain; version=0.0.4; charset=utf-8")


@blueprint.get("/openapi.json")
def openapi():
    """The OpenAPI 3.1 document of this API, generated from the models (``web.openapi``)."""
    # imported here, not at start: the document's models and builder would cost every
    # worker resident memory for an answer that is rarely asked for
    from web.openapi import openapi_document

    return jsonify(openapi_document())
