"""The OpenAPI 3 document served at /openapi.json: every endpoint of SPEC §5, with schemas."""

from __future__ import annotations

from importlib import metadata

from common.models import MAX_BATCH, MAX_EPOCH, MAX_ID_LENGTH


def _version() -> str:
    try:
        return metadata.version("async-mail-service")
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict, description: str = "") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def nullable(schema: dict) -> dict:
    return {**schema, "nullable": True}


def obj(required: list[str] | None = None, **properties) -> dict:
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
BOOLEAN = {"type": "boolean"}
EPOCH = {"type": "integer", "description": "Epoch seconds (UTC)."}
OK_TRUE = {"type": "boolean", "enum": [True]}
STATUS_NAMES = ["queued", "deferred", "sending", "sent", "error"]
PRIORITY = {
    "description": "0 immediate, 1 high, 2 medium, 3 low; the names and '0'-'3' are accepted.",
    "oneOf": [
        {"type": "integer", "minimum": 0, "maximum": 3},
        {"type": "string", "enum": ["immediate", "high", "medium", "low", "0", "1", "2", "3"]},
    ],
}
ADDRESSES = {
    "description": "One address string (commas separate several) or a list of them; "
    "'Name <addr@example.com>' is allowed.",
    "oneOf": [STRING, {"type": "array", "items": STRING}],
}

SCHEMAS = {
    "Error": obj(
        ["ok", "error"],
        ok={"type": "boolean", "enum": [False]},
        error={"type": "string", "description": "A sentence saying what to change."},
    ),
    "S3Source": obj(["bucket", "key"], bucket=STRING, key=STRING),
    "Attachment": {
        **obj(
            ["filename"],
            filename=STRING,
            content={"type": "string", "format": "byte", "description": "Base64 content."},
            url={"type": "string", "format": "uri", "description": "http(s) URL fetched at send."},
            s3=ref("S3Source"),
            mime_type={"type": "string", "example": "application/pdf"},
            content_id={"type": "string", "description": "For an inline part (cid:)."},
        ),
        "description": "Exactly one of content, url or s3.",
    },
    "Message": {
        **obj(
            ["id", "from", "to", "subject", "body"],
            id={"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
            account_id=nullable({**STRING, "description": "None: the [smtp] default account."}),
            **{"from": {"type": "string", "example": "Shop <noreply@shop.example>"}},
            from_name=STRING,
            to=ADDRESSES,
            cc=ADDRESSES,
            bcc=ADDRESSES,
            reply_to=ADDRESSES,
            return_path={"type": "string", "description": "Envelope sender."},
            subject={"type": "string", "minLength": 1},
            body=STRING,
            content_type={"type": "string", "enum": ["plain", "html"]},
            html={"type": "boolean", "description": "true means content_type html."},
            headers={"type": "object", "additionalProperties": STRING},
            message_id=STRING,
            priority=PRIORITY,
            deferred_ts=nullable(
                {
                    "type": "number",
                    "minimum": 0,
                    "maximum": MAX_EPOCH,
                    "description": "Do not send before this epoch second.",
                }
            ),
            attachments={"type": "array", "items": ref("Attachment")},
        ),
        "description": "Unknown fields are ignored but stored and returned unchanged. "
        "CR or LF in any header value is rejected.",
    },
    "AddMessagesRequest": obj(
        ["messages"],
        messages={"type": "array", "maxItems": MAX_BATCH, "items": ref("Message")},
        default_priority=PRIORITY,
    ),
    "Rejected": obj(
        ["id", "reason"], id=nullable(STRING), reason={"type": "string", "example": "in flight"}
    ),
    "AddMessagesResponse": obj(
        ["ok", "queued", "rejected"],
        ok=BOOLEAN,
        queued=INTEGER,
        rejected={"type": "array", "items": ref("Rejected")},
        error={"type": "string", "description": "Present when no message was queued."},
    ),
    "DeleteMessagesRequest": obj(["ids"], ids={"type": "array", "items": STRING}),
    "DeleteMessagesResponse": obj(
        ["ok", "removed", "not_found", "in_flight"],
        ok=OK_TRUE,
        removed=INTEGER,
        not_found={"type": "array", "items": STRING},
        in_flight={"type": "array", "items": STRING},
    ),
    "CleanupRequest": obj(
        older_than_seconds={
            "type": "integer",
            "minimum": 0,
            "description": "Default: delivery_report_retention_seconds.",
        }
    ),
    "Removed": obj(["ok", "removed"], ok=OK_TRUE, removed=INTEGER),
    "RunNowResponse": obj(
        ["ok", "woken"], ok=OK_TRUE, woken={**INTEGER, "description": "Processes nudged."}
    ),
    "ActiveResponse": obj(["ok", "active"], ok=OK_TRUE, active=BOOLEAN),
    "Account": obj(
        ["id", "host", "port"],
        id={"type": "string", "pattern": r"^[\w.@+-]+$"},
        host=STRING,
        port={"type": "integer", "minimum": 1, "maximum": 65535},
        user=nullable(STRING),
        password={**nullable(STRING), "writeOnly": True},
        use_tls=nullable({**BOOLEAN, "description": "Implicit TLS; default: port is 465."}),
        starttls=BOOLEAN,
        ttl={"type": "integer", "minimum": 1, "description": "Seconds a connection is reused."},
        timeout={"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 600},
        limit_per_second=nullable({"type": "integer", "minimum": 1}),
        limit_per_minute=nullable({"type": "integer", "minimum": 1}),
        limit_per_hour=nullable({"type": "integer", "minimum": 1}),
        limit_per_day=nullable({"type": "integer", "minimum": 1}),
        limit_behavior={"type": "string", "enum": ["defer", "reject"]},
        batch_size=nullable({"type": "integer", "minimum": 1}),
    ),
    "AccountOut": {
        "allOf": [ref("Account"), obj(created_at=EPOCH, updated_at=EPOCH)],
        "description": "An account as stored; the password is never returned.",
    },
    "AccountResponse": obj(["ok", "account"], ok=OK_TRUE, account=ref("AccountOut")),
    "AccountsResponse": obj(
        ["ok", "accounts"], ok=OK_TRUE, accounts={"type": "array", "items": ref("AccountOut")}
    ),
    "DeleteAccountResponse": obj(
        ["ok", "removed", "purged_messages"], ok=OK_TRUE, removed=STRING, purged_messages=INTEGER
    ),
    "MessageRecord": obj(
        ["id", "status", "message"],
        id=STRING,
        account_id=nullable(STRING),
        priority=INTEGER,
        status={"type": "string", "enum": STATUS_NAMES},
        message=ref("Message"),
        created_at=EPOCH,
        updated_at=EPOCH,
        deferred_ts=nullable(EPOCH),
        sent_ts=nullable(EPOCH),
        error_ts=nullable(EPOCH),
        error=nullable(STRING),
        reported_ts=nullable(EPOCH),
        lease_owner=nullable(STRING),
        lease_expires=nullable(EPOCH),
        attempts={**INTEGER, "description": "Delivery attempts so far."},
        smtp_code=nullable(INTEGER),
        refused=nullable(
            {"type": "object", "description": "Refused recipients: address -> [code, text]."}
        ),
        possible_duplicate=BOOLEAN,
    ),
    "Attempt": obj(
        ts=EPOCH,
        outcome={"type": "string", "example": "temporary"},
        smtp_code=nullable(INTEGER),
        detail=nullable(STRING),
        duration=nullable({"type": "number", "description": "Seconds."}),
        process=nullable(STRING),
    ),
    "MessageDetail": {
        "allOf": [
            ref("MessageRecord"),
            obj(ok=OK_TRUE, attempt_log={"type": "array", "items": ref("Attempt")}),
        ]
    },
    "MessagesPage": obj(
        ["ok", "messages", "next_cursor"],
        ok=OK_TRUE,
        messages={"type": "array", "items": ref("MessageRecord")},
        next_cursor=nullable({**INTEGER, "description": "Pass as cursor for the next page."}),
    ),
    "Health": obj(["ok", "status"], ok=BOOLEAN, status={"type": "string"}, error=STRING),
    "Status": obj(
        ["ok", "active", "counts"],
        ok=OK_TRUE,
        active=BOOLEAN,
        test_mode=BOOLEAN,
        counts={
            "type": "object",
            "properties": {name: INTEGER for name in STATUS_NAMES},
        },
        pending_by_priority={"type": "object", "additionalProperties": INTEGER},
        oldest_ready_age_seconds={"type": "number"},
        processes={
            "type": "array",
            "items": obj(
                process=STRING, kind=STRING, pid=INTEGER, ts=EPOCH, age_seconds={"type": "number"}
            ),
        },
    ),
    "Options": obj(["ok", "allow"], ok=OK_TRUE, allow={"type": "array", "items": STRING}),
}


def _error(description: str) -> dict:
    return json_body(ref("Error"), description)


RESPONSES = {
    "BadRequest": _error("The request or every message in it is invalid."),
    "Unauthorized": _error("Missing or wrong token (or a remote client without api_token)."),
    "NotFound": _error("No such resource."),
    "TooLarge": _error("The body exceeds max_request_bytes."),
    "Conflict": _error("The account still has unsent messages."),
    "Internal": _error("A bug; it has been logged."),
}


def _responses(ok_schema: str | dict, ok_description: str, *errors: str) -> dict:
    schema = ref(ok_schema) if isinstance(ok_schema, str) else ok_schema
    out = {"200": json_body(schema, ok_description)}
    codes = {
        "BadRequest": "400",
        "Unauthorized": "401",
        "NotFound": "404",
        "Conflict": "409",
        "TooLarge": "413",
        "Internal": "500",
    }
    for name in ("Unauthorized", *errors, "Internal"):
        out[codes[name]] = {"$ref": f"#/components/responses/{name}"}
    return out


def _operation(
    op_id: str,
    summary: str,
    responses: dict,
    body: str | None = None,
    body_required: bool = True,
    parameters: list | None = None,
    public: bool = False,
) -> dict:
    operation = {"operationId": op_id, "summary": summary, "responses": responses}
    if body is not None:
        operation["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": ref(body)}},
        }
    if parameters:
        operation["parameters"] = parameters
    if public:
        operation["security"] = []
    return operation


def _query(name: str, schema: dict, description: str) -> dict:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _path_id(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": STRING}


def _command(
    op_id: str,
    summary: str,
    answer: str,
    body: str | None = None,
    errors: tuple = ("BadRequest", "TooLarge"),
    body_required: bool = True,
) -> dict:
    return {
        "post": _operation(
            op_id, summary, _responses(answer, "Done.", *errors), body, body_required
        )
    }


PATHS = {
    "/health": {
        "get": _operation(
            "health",
            "Liveness: 200 when the database answers.",
            {
                "200": json_body(ref("Health"), "Healthy."),
                "503": json_body(ref("Health"), "The database does not answer."),
            },
            public=True,
        )
    },
    "/status": {
        "get": _operation(
            "status",
            "Scheduler switch, counts per status, process heartbeats.",
            _responses("Status", "Current state."),
        )
    },
    "/commands/add-messages": _command(
        "addMessages",
        "Queue up to 1000 messages; each is validated on its own.",
        "AddMessagesResponse",
        "AddMessagesRequest",
    ),
    "/commands/delete-messages": _command(
        "deleteMessages",
        "Delete messages no dispatcher holds.",
        "DeleteMessagesResponse",
        "DeleteMessagesRequest",
    ),
    "/commands/cleanup-messages": _command(
        "cleanupMessages",
        "Purge messages reported longer ago than older_than_seconds.",
        "Removed",
        "CleanupRequest",
        body_required=False,
    ),
    "/commands/run-now": _command(
        "runNow",
        "Wake every dispatcher and the reporter now (needed in test_mode).",
        "RunNowResponse",
        errors=(),
    ),
    "/commands/suspend": _command(
        "suspend",
        "Stop claiming messages (persisted); reporting continues.",
        "ActiveResponse",
        errors=(),
    ),
    "/commands/activate": _command(
        "activate", "Resume claiming messages (persisted).", "ActiveResponse", errors=()
    ),
    "/account": _command(
        "addAccount",
        "Create or replace an SMTP account (the password is never returned).",
        "AccountResponse",
        "Account",
    ),
    "/accounts": {
        "get": _operation(
            "listAccounts",
            "Every SMTP account, without passwords.",
            _responses("AccountsResponse", "The accounts."),
        )
    },
    "/account/{account_id}": {
        "parameters": [_path_id("account_id")],
        "delete": _operation(
            "deleteAccount",
            "Delete an account; 409 while it has unsent messages.",
            _responses("DeleteAccountResponse", "Deleted.", "NotFound", "Conflict"),
            parameters=[_query("purge", {"type": "boolean"}, "Also delete its unsent messages.")],
        ),
    },
    "/messages": {
        "get": _operation(
            "listMessages",
            "A page of messages in storage order.",
            _responses("MessagesPage", "One page.", "BadRequest"),
            parameters=[
                _query("active_only", {"type": "boolean"}, "Only messages not yet sent or failed."),
                _query("status", {"type": "string", "enum": STATUS_NAMES}, "Only this status."),
                _query("account_id", STRING, "Only this account's messages."),
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                    "Page size.",
                ),
                _query(
                    "cursor", {"type": "integer", "minimum": 0}, "next_cursor of the last page."
                ),
            ],
        )
    },
    "/messages/{message_id}": {
        "parameters": [_path_id("message_id")],
        "get": _operation(
            "getMessage",
            "One message: the record, its attempts and its status.",
            _responses("MessageDetail", "The message.", "NotFound"),
        ),
    },
    "/metrics": {
        "get": _operation(
            "metrics",
            "Prometheus text format (open when metrics_public is true).",
            {
                "200": {"description": "Metrics.", "content": {"text/plain": {"schema": STRING}}},
                "401": {"$ref": "#/components/responses/Unauthorized"},
            },
        )
    },
    "/openapi.json": {
        "get": _operation(
            "openapi", "This document.", _responses({"type": "object"}, "The OpenAPI document.")
        )
    },
}

OPENAPI = {
    "openapi": "3.0.3",
    "info": {
        "title": "async-mail-service",
        "version": _version(),
        "description": "Durable REST-to-SMTP relay. Every answer is JSON with 'ok'; failures "
        "add 'error'. Timestamps are epoch seconds. Unknown routes answer 404 and wrong "
        "methods 405, both JSON.",
    },
    "security": [{"apiToken": []}, {"bearerToken": []}],
    "paths": PATHS,
    "components": {
        "securitySchemes": {
            "apiToken": {"type": "apiKey", "in": "header", "name": "X-API-Token"},
            "bearerToken": {"type": "http", "scheme": "bearer"},
        },
        "schemas": SCHEMAS,
        "responses": RESPONSES,
    },
}


def openapi_document() -> dict:
    """The document /openapi.json serves."""
    return OPENAPI
