"""The OpenAPI 3.1 document served at /openapi.json, generated from the pydantic models.

Schemas are the models' own JSON schemas (``common.models`` for the payloads the CLI shares,
``web.schemas`` for the API's requests and answers), so a constraint is written once and both
enforced and published.  Paths come from ``ROUTES``, one row per route; tests hold the rows
equal to the Flask url_map, check real answers against the schema of their status, and run
every row against every kind of caller (tests/test_isolation.py).

Each operation says who may call it (docs/tenants.md): ``security`` names the admin token
alone for the admin's routes, the admin's or a tenant's token for the others, and
``x-asyncmail-access`` says the same in one word: public, session, admin or tenant.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import metadata

from pydantic import BaseModel

from common.models import MAX_BATCH, Account
from common.tenants import NewTenant, TenantSettings
from web.schemas import (
    AccountAnswer,
    AccountsAnswer,
    ActiveAnswer,
    AddMessagesAnswer,
    AddMessagesRefused,
    AddMessagesRequest,
    CleanupAnswer,
    CleanupRequest,
    DeleteAccountAnswer,
    DeleteAccountQuery,
    DeleteMessagesAnswer,
    DeleteMessagesRequest,
    DeleteTenantQuery,
    Error,
    Health,
    HealthDown,
    MessageDetail,
    MessagesPage,
    MessagesQuery,
    RetryAnswer,
    RetryRequest,
    RunNowAnswer,
    RunNowRequest,
    ServiceStatus,
    SuppressionAnswer,
    SuppressionRemoved,
    SuppressionRequest,
    SuppressionsPage,
    SuppressionsQuery,
    TenantAnswer,
    TenantDeleted,
    TenantsAnswer,
    TenantToken,
    UsageAnswer,
)
from web.session import COOKIE

REF = "#/components/schemas/{model}"
SECURITY = [{"apiToken": []}, {"bearerToken": []}]  # the admin token, either header
TENANT_SECURITY = [*SECURITY, {"tenantToken": []}, {"tenantBearer": []}]  # or a tenant's
TENANT_HEADER = {
    "name": "X-Tenant",
    "in": "header",
    "required": False,
    "description": "The tenant to act in: any, for the admin token (default: the default "
    "tenant; the service-wide routes then act on the whole service); only its own, for a "
    "tenant token.",
    "schema": {"type": "string"},
}
ERRORS = {  # the description of each failure status; the body is always an Error
    400: "The request is invalid; 'error' says why.",
    401: "Missing or wrong token (or a remote client while no api_token is configured).",
    403: "A tenant token on an admin route or naming another tenant in X-Tenant; or no "
    "api_token is configured and the request names a Host or Origin that is not local.",
    404: "No such resource (message, account, suppressed address, tenant) in the tenant "
    "acted in, or X-Tenant names no tenant.",
    408: "The body arrived too slowly; the connection is closed.",
    409: "The account still has unsent messages; or the tenant has unsent messages or "
    "unreported outcomes, or exists already.",
    413: "The body exceeds max_request_bytes.",
    415: "No api_token is configured and the body is not sent as application/json.",
    500: "A bug; it has been logged.",
    503: "The database is busy or full; nothing was stored, retry in a few seconds.",
}


@dataclass(frozen=True)
class Media:
    """An answer that is not one of the models: its media type and schema."""

    description: str
    schema: dict
    media_type: str = "application/json"


Answer = type[BaseModel] | Media | tuple[type[BaseModel] | Media, ...]  # a tuple: any of them


def html(description: str) -> Media:
    """An HTML answer of the status page."""
    return Media(description, {"type": "string"}, "text/html")


PAGE = html("The page.")


@dataclass(frozen=True)
class Route:
    """One operation: what it takes and what it answers, per status.

    Every route may also answer 500, 503 when it uses the database, 401 and 403 unless
    public, 415 when it is a POST, and 408 when it reads a body.
    """

    operation_id: str
    method: str
    path: str  # OpenAPI form: {name} for a path parameter
    summary: str
    answers: dict[int, Answer]
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    public: bool = False  # answered without a token
    database: bool = True  # False: never waits for the database, so never answers 503
    session: bool = False  # the status page: its session cookie instead of the token
    admin: bool = False  # the admin token alone; a tenant token gets 403

    @property
    def access(self) -> str:
        """Who may call it: public, session, admin or tenant (the admin or a tenant)."""
        if self.public:
            return "public"
        if self.session:
            return "session"
        return "admin" if self.admin else "tenant"


BAD_BODY = {400: Error, 413: Error}  # every route that reads a JSON body
ROUTES = (
    Route("health", "GET", "/health", "Liveness: 200 while the database answers.",
          {200: Health, 503: HealthDown}, public=True),
    Route("status", "GET", "/status", "Scheduler switch, counts per status, process heartbeats.",
          {200: ServiceStatus}),
    Route("addMessages", "POST", "/commands/add-messages",
          f"Queue up to {MAX_BATCH} messages; each is validated on its own.",
          {200: AddMessagesAnswer, 400: (Error, AddMessagesRefused), 413: Error},
          body=AddMessagesRequest),
    Route("deleteMessages", "POST", "/commands/delete-messages",
          "Delete messages no dispatcher holds.",
          {200: DeleteMessagesAnswer, **BAD_BODY}, body=DeleteMessagesRequest),
    Route("cleanupMessages", "POST", "/commands/cleanup-messages",
          "Purge messages reported longer ago than older_than_seconds.",
          {200: CleanupAnswer, **BAD_BODY}, body=CleanupRequest, body_required=False),
    Route("runNow", "POST", "/commands/run-now",
          "Wake every dispatcher and the reporter now (needed in test_mode); flush: retries too.",
          {200: RunNowAnswer, **BAD_BODY}, body=RunNowRequest, body_required=False),
    Route("retry", "POST", "/commands/retry",
          "Requeue errored messages and messages waiting for a retry.",
          {200: RetryAnswer, **BAD_BODY, 404: Error}, body=RetryRequest),
    Route("suspend", "POST", "/commands/suspend",
          "Stop claiming messages (persisted); reporting continues.", {200: ActiveAnswer}),
    Route("activate", "POST", "/commands/activate",
          "Resume claiming messages (persisted).", {200: ActiveAnswer}),
    Route("saveAccount", "POST", "/account",
          "Create or replace an SMTP account (the password is never returned).",
          {200: AccountAnswer, **BAD_BODY}, body=Account),
    Route("listAccounts", "GET", "/accounts", "Every SMTP account, without passwords.",
          {200: AccountsAnswer}),
    Route("accountUsage", "GET", "/accounts/{account_id}/usage",
          "Sends in each rate-limit window against the account's limits.",
          {200: UsageAnswer, 404: Error}),
    Route("deleteAccount", "DELETE", "/account/{account_id}",
          "Delete an account; 409 while it has unsent messages unless ?purge=true.",
          {200: DeleteAccountAnswer, 404: Error, 409: Error}, query=DeleteAccountQuery),
    Route("listMessages", "GET", "/messages",
          "A page of messages in storage order; their payloads only with include=payload.",
          {200: MessagesPage, 400: Error}, query=MessagesQuery),
    Route("getMessage", "GET", "/messages/{message_id}",
          "One message: the record, its attempts and its status.",
          {200: MessageDetail, 404: Error}),
    Route("listSuppressions", "GET", "/suppressions",
          "A page of the suppression list: addresses the dispatchers do not send to.",
          {200: SuppressionsPage, 400: Error}, query=SuppressionsQuery),
    Route("suppress", "POST", "/suppressions",
          "Put an address on the suppression list (reason: manual, complaint, hard_bounce).",
          {200: SuppressionAnswer, **BAD_BODY}, body=SuppressionRequest),
    Route("unsuppress", "DELETE", "/suppressions/{address}",
          "Take an address off the suppression list: it is sent to again.",
          {200: SuppressionRemoved, 404: Error}),
    Route("metrics", "GET", "/metrics",
          "Prometheus text format (open when metrics_public is true).",
          {200: Media("Prometheus text format.", {"type": "string"}, "text/plain")}, admin=True),
    Route("openapi", "GET", "/openapi.json", "This document.",
          {200: Media("The OpenAPI 3.1 document.", {"type": "object"})}),
    # tenants: the admin's alone (docs/tenants.md)
    Route("createTenant", "POST", "/tenants",
          "Create a tenant; the answer carries its API token, the only time it is shown.",
          {201: TenantToken, **BAD_BODY, 409: Error}, body=NewTenant, admin=True),
    Route("listTenants", "GET", "/tenants", "Every tenant, the default one first.",
          {200: TenantsAnswer}, admin=True),
    Route("getTenant", "GET", "/tenants/{tenant_id}",
          "One tenant (never its token nor its report secrets).",
          {200: TenantAnswer}, admin=True),
    Route("changeTenant", "PATCH", "/tenants/{tenant_id}",
          "Change a tenant's name, report upstream or limits; null clears an optional field.",
          {200: TenantAnswer, **BAD_BODY}, body=TenantSettings, admin=True),
    Route("deleteTenant", "DELETE", "/tenants/{tenant_id}",
          "Remove a tenant and all its data; 409 while it owes mail or reports, unless "
          "?purge=true.",
          {200: TenantDeleted, 400: Error, 409: Error}, query=DeleteTenantQuery, admin=True),
    Route("rotateTenantToken", "POST", "/tenants/{tenant_id}/rotate-token",
          "A new API token for the tenant; the old one stops working at once.",
          {200: TenantToken, 400: Error}, admin=True),
    Route("suspendTenant", "POST", "/tenants/{tenant_id}/suspend",
          "Stop the tenant's mail (only its mail; its reports go on).",
          {200: TenantAnswer}, admin=True),
    Route("activateTenant", "POST", "/tenants/{tenant_id}/activate",
          "Resume the tenant's mail.", {200: TenantAnswer}, admin=True),
    # the status page: HTML for people (docs/operations.md), behind a session cookie
    Route("statusPage", "GET", "/ui", "The status page (HTML, refreshes itself).",
          {200: PAGE, 303: html("No session: to the login form.")},
          session=True),
    Route("loginForm", "GET", "/ui/login", "The status page's login form (HTML).",
          {200: PAGE, 303: html("No api_token configured: to the page.")},
          public=True, database=False),
    Route("login", "POST", "/ui/login",
          "Form field 'token' (the api_token) for a session cookie; same-origin forms only.",
          {303: html("Logged in: the session cookie, and to the page."),
           401: (html("Wrong token: the form again."), Error),
           403: html("Not sent from a page of this server: refused.")},
          public=True),
    Route("logout", "POST", "/ui/logout", "End the session; same-origin forms only.",
          {303: html("Logged out: to the login form."),
           403: html("Not sent from a page of this server: refused.")},
          public=True, database=False),
)  # fmt: skip


def _version() -> str:
    try:
        return metadata.version("async-mail-service")
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": REF.format(model=model.__name__)}


def _parts(answer: Answer) -> tuple[type[BaseModel] | Media, ...]:
    return answer if isinstance(answer, tuple) else (answer,)


def _models(route: Route) -> list[type[BaseModel]]:
    """The models a route's body and answers name (its query becomes parameters)."""
    found = [route.body] if route.body else []
    for answer in _answers(route).values():
        found.extend(part for part in _parts(answer) if not isinstance(part, Media))
    return found


def _answers(route: Route) -> dict[int, Answer]:
    common = {500: Error}
    if not route.public:
        common.update({401: Error, 403: Error})
    if route.access in {"admin", "tenant"}:
        common[404] = Error  # X-Tenant may name no tenant
    if route.method in {"POST", "PATCH"}:
        common[415] = Error
    if route.body is not None:
        common[408] = Error
    if route.database:
        common[503] = Error
    return dict(sorted({**common, **route.answers}.items()))


def _response(status: int, answer: Answer) -> dict:
    media = [part for part in _parts(answer) if isinstance(part, Media)]
    models = [part for part in _parts(answer) if not isinstance(part, Media)]
    content = {m.media_type: {"schema": m.schema} for m in media}
    descriptions = [m.description for m in media]
    if models:
        schema = _ref(models[0]) if len(models) == 1 else {"anyOf": [_ref(m) for m in models]}
        content["application/json"] = {"schema": schema}
        first = models[0]
        descriptions.append(ERRORS[status] if first is Error else first.__doc__.splitlines()[0])
    return {"description": " Or: ".join(descriptions), "content": content}


def _parameters(route: Route, defs: dict) -> list[dict]:
    path = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", route.path)
    ]
    if route.access in {"admin", "tenant"}:
        path.append(TENANT_HEADER)
    if route.query is None:
        return path
    query = _collect(defs, route.query.model_json_schema(ref_template=REF))
    return path + [
        {
            "name": name,
            "in": "query",
            "required": name in query.get("required", ()),
            "description": prop.pop("description", ""),
            "schema": prop,
        }
        for name, prop in query["properties"].items()
    ]


def _operation(route: Route, defs: dict) -> dict:
    operation = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "x-asyncmail-access": route.access,
        "responses": {str(status): _response(status, a) for status, a in _answers(route).items()},
    }
    parameters = _parameters(route, defs)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": route.body_required,
            "content": {"application/json": {"schema": _ref(route.body)}},
        }
    if route.public:
        operation["security"] = []
    elif route.session:
        operation["security"] = [{"uiSession": []}]
    else:
        operation["security"] = SECURITY if route.admin else TENANT_SECURITY
    return operation


def _collect(defs: dict, schema: dict, name: str | None = None) -> dict:
    """Move a model's ``$defs`` (and the model itself, given its name) into ``defs``."""
    found = {**schema.pop("$defs", {}), **({name: schema} if name else {})}
    for key, definition in found.items():
        if defs.setdefault(key, definition) != definition:
            raise ValueError(f"two different schemas are named {key}")
    return schema


def _components(defs: dict) -> dict:
    """Every model a route names, and the models and enums those use, as pydantic sees them."""
    for model in {model for route in ROUTES for model in _models(route)}:
        _collect(defs, model.model_json_schema(ref_template=REF), model.__name__)
    return dict(sorted(defs.items()))


@functools.cache
def openapi_document() -> dict:
    """The document /openapi.json serves, built on first use."""
    defs: dict = {}
    paths: dict = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, defs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "async-mail-service",
            "version": _version(),
            "description": "Durable REST-to-SMTP relay. Every answer is JSON with 'ok'; "
            "failures add 'error'. Timestamps are epoch seconds. Unknown routes answer 404 "
            "and wrong methods 405, both JSON. Without a configured api_token only loopback "
            "clients are served. The /ui paths are the status page for people: HTML, with a "
            "session cookie from its login form. Tenants: [server] api_token is the admin "
            "token (every route; X-Tenant picks the tenant it acts in); a tenant token acts "
            "in its own tenant only and never reaches the admin routes "
            "(x-asyncmail-access: admin); another tenant's ids answer 404.",
        },
        "security": SECURITY,
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiToken": {"type": "apiKey", "in": "header", "name": "X-API-Token"},
                "bearerToken": {"type": "http", "scheme": "bearer"},
                "tenantToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Token",
                    "description": "A tenant's token (amt_...): its own tenant only.",
                },
                "tenantBearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A tenant's token (amt_...): its own tenant only.",
                },
                "uiSession": {"type": "apiKey", "in": "cookie", "name": COOKIE},
            },
            "schemas": _components(defs),
        },
    }
