"""The REST API through Flask's test client: every endpoint's answers, auth, persistence."""

from __future__ import annotations

import json
import time

import pytest

from common import metrics, store, wakeup
from tests.support.factories import account, message
from web.app import create_app

TOKEN = "s3cret-token"
AUTH = {"X-API-Token": TOKEN}


@pytest.fixture
def app(make_config):
    return create_app(make_config(api_token=TOKEN, smtp_host="127.0.0.1", smtp_port=2525))


@pytest.fixture
def client(app):
    return app.test_client()


def post(client, path, body=None, **kwargs):
    return client.post(path, json=body, headers=AUTH, **kwargs)


def get(client, path):
    return client.get(path, headers=AUTH)


def add(client, *messages, **extra):
    return post(client, "/commands/add-messages", {"messages": list(messages), **extra})


# -- authentication ---------------------------------------------------------------------------
def test_health_needs_no_token(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json == {"ok": True, "status": "ok"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Token": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"X-API-Token": ""},
    ],
)
def test_missing_or_wrong_token_is_401(client, headers):
    response = client.get("/status", headers=headers)
    assert response.status_code == 401
    assert response.json["ok"] is False
    assert "token" in response.json["error"].lower()
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("headers", [AUTH, {"Authorization": f"Bearer {TOKEN}"}])
def test_token_in_either_header(client, headers):
    assert client.get("/status", headers=headers).status_code == 200


def test_unauthenticated_requests_reach_no_route(client, conn):
    response = client.post("/commands/add-messages", json={"messages": [message()]})
    assert response.status_code == 401
    assert client.get("/no/such/route").status_code == 401
    assert store.messages.list_page(conn, "default", time.time())[0] == []


def test_without_token_only_loopback_is_served(make_config):
    client = create_app(make_config()).test_client()
    assert client.get("/status").status_code == 200
    remote = client.get("/status", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert remote.status_code == 401
    assert "loopback" in remote.json["error"]
    mapped = client.get("/status", environ_base={"REMOTE_ADDR": "::ffff:127.0.0.1"})
    assert mapped.status_code == 200


def test_empty_token_never_authenticates(make_config):
    client = create_app(make_config(api_token="")).test_client()
    remote = client.get(
        "/status", headers={"X-API-Token": ""}, environ_base={"REMOTE_ADDR": "192.0.2.7"}
    )
    assert remote.status_code == 401


def test_factory_overrides_apply_to_a_given_config(make_config):
    client = create_app(make_config(), api_token="other").test_client()
    assert client.get("/status").status_code == 401
    assert client.get("/status", headers={"X-API-Token": "other"}).status_code == 200


def test_metrics_need_token_unless_public(make_config, client):
    assert client.get("/metrics").status_code == 401
    public = create_app(make_config(api_token=TOKEN, metrics_public=True)).test_client()
    assert public.get("/metrics").status_code == 200
    assert public.get("/status").status_code == 401


# -- routing errors ---------------------------------------------------------------------------
def test_unknown_route_is_json_404(client):
    response = get(client, "/no/such/route")
    assert response.status_code == 404
    assert response.is_json and response.json["ok"] is False
    assert "/openapi.json" in response.json["error"]


def test_wrong_method_is_json_405_with_allow(client):
    response = get(client, "/commands/add-messages")
    assert response.status_code == 405
    assert response.json["ok"] is False
    assert "POST" in response.json["error"]
    assert "POST" in response.headers["Allow"]


def test_options_answers_json(client):
    response = client.options("/messages", headers=AUTH)
    assert response.status_code == 200
    assert response.json["ok"] is True and "GET" in response.json["allow"]


# -- add-messages -------------------------------------------------------------------------------
def test_add_messages_queues_and_reads_back_identical(client, conn):
    sent = message(
        "ünï/code?1",
        to=["Bob <bob@example.org>", "carol@example.org"],
        cc="dave@example.org",
        subject="Grüße ✉",
        body="<p>Hallo</p>",
        content_type="html",
        headers={"X-Campaign": "autumn"},
        priority=1,
        deferred_ts=1.5,
        attachments=[{"filename": "a.txt", "content": "aGVsbG8=", "mime_type": "text/plain"}],
        unknown_field={"kept": ["as", "sent"]},
    )
    response = add(client, sent)
    assert response.status_code == 200
    assert response.json == {"ok": True, "queued": 1, "rejected": []}
    record = get(client, "/messages/ünï/code%3F1").json
    assert record["message"] == sent
    assert json.dumps(record["message"]) == json.dumps(sent)
    assert isinstance(record["message"]["deferred_ts"], float)
    assert record["priority"] == 1 and record["status"] == "queued"


def test_default_priority_of_the_request_and_of_the_config(client):
    add(client, message("a"), message("b", priority="low"), default_priority="immediate")
    add(client, message("c"))
    by_id = {m["id"]: m["priority"] for m in get(client, "/messages").json["messages"]}
    assert by_id == {"a": 0, "b": 3, "c": 2}


def test_valid_items_queue_beside_rejected_ones(client, conn):
    response = add(client, message("good"), message("bad", to="nobody"))
    assert response.status_code == 200
    assert response.json["queued"] == 1
    assert response.json["rejected"][0]["id"] == "bad"
    assert [m["id"] for m in store.messages.list_page(conn, "default", time.time())[0]] == ["good"]


def test_repeated_id_replaces_an_unclaimed_message(client, conn):
    add(client, message("m", subject="first"))
    response = add(client, message("m", subject="second"))
    assert response.json["queued"] == 1
    assert get(client, "/messages/m").json["message"]["subject"] == "second"


def test_repeated_id_is_rejected_while_leased_or_after_sent(client, conn):
    add(client, message("leased"), message("sent"))
    with conn:
        conn.execute(
            "UPDATE messages SET lease_owner = 'd1', lease_expires = ? WHERE id = ?",
            (time.time() + 60, "leased"),
        )
        conn.execute("UPDATE messages SET sent_ts = ? WHERE id = ?", (int(time.time()), "sent"))
    response = add(client, message("leased", subject="x"), message("sent", subject="y"))
    assert response.status_code == 400
    reasons = {r["id"]: r["reason"] for r in response.json["rejected"]}
    assert reasons == {"leased": "in flight", "sent": "already sent"}
    assert get(client, "/messages/leased").json["message"]["subject"] == "leased"


def test_empty_batch_is_accepted(client):
    response = add(client)
    assert response.status_code == 200
    assert response.json == {"ok": True, "queued": 0, "rejected": []}


def test_enqueue_wakes_dispatchers(client, app):
    waiter = wakeup.Waiter(app.config["ASYNCMAIL"].run_dir, wakeup.DISPATCHER, "test")
    try:
        add(client, message())
        assert waiter.wait(2) is True
    finally:
        waiter.close()


# -- reading messages ---------------------------------------------------------------------------
def test_get_message_returns_record_attempts_and_status(client, conn):
    add(client, message("m"))
    with conn:
        conn.execute(
            "INSERT INTO attempts(tenant_id, message_id, ts, outcome, smtp_code, detail) "
            "VALUES ('default', 'm', 1700000000.7, 'temporary', 451, 'try later')"
        )
    record = get(client, "/messages/m").json
    assert record["ok"] is True and record["id"] == "m" and record["status"] == "queued"
    assert record["attempt_log"] == [
        {
            "ts": 1700000000,
            "outcome": "temporary",
            "smtp_code": 451,
            "detail": "try later",
            "duration": None,
            "process": None,
        }
    ]
    assert isinstance(record["created_at"], int)


def test_get_unknown_message_is_404(client):
    response = get(client, "/messages/nope")
    assert response.status_code == 404 and "nope" in response.json["error"]


def test_list_messages_pages_with_cursor(client):
    add(client, *[message(f"m{i:02}") for i in range(25)])
    seen, cursor, pages = [], None, 0
    while True:
        page = get(client, "/messages?limit=10" + (f"&cursor={cursor}" if cursor else "")).json
        seen += [m["id"] for m in page["messages"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"m{i:02}" for i in range(25)]
    assert pages == 3


def test_list_messages_exact_page_has_no_next_cursor(client):
    add(client, *[message(f"m{i}") for i in range(5)])
    page = get(client, "/messages?limit=5").json
    assert len(page["messages"]) == 5 and page["next_cursor"] is None


def test_list_messages_filters(client, conn):
    post(client, "/account", account("acme"))
    add(
        client,
        message("a"),
        message("b", account_id="acme"),
        message("c"),
        message("d", deferred_ts=time.time() + 3600),
    )
    with conn:
        conn.execute("UPDATE messages SET sent_ts = 1 WHERE id = 'c'")

    def ids(query):
        return sorted(m["id"] for m in get(client, "/messages" + query).json["messages"])

    assert ids("?active_only=true") == ["a", "b", "d"]
    assert ids("?status=sent") == ["c"]
    assert ids("?status=deferred") == ["d"]
    assert ids("?status=queued&account_id=acme") == ["b"]
    assert ids("?account_id=acme") == ["b"]


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=1001", "limit=ten", "cursor=-1", "cursor=x", "status=lost", "include=all"],
)
def test_list_messages_bad_query_is_400(client, query):
    response = get(client, "/messages?" + query)
    assert response.status_code == 400 and response.json["ok"] is False


# -- delete and cleanup -------------------------------------------------------------------------
def test_delete_messages(client, conn):
    add(client, message("a"), message("b"))
    with conn:
        conn.execute(
            "UPDATE messages SET lease_owner = 'd', lease_expires = ? WHERE id = 'b'",
            (time.time() + 60,),
        )
    response = post(client, "/commands/delete-messages", {"ids": ["a", "b", "zz"]})
    assert response.json == {"ok": True, "removed": 1, "not_found": ["zz"], "in_flight": ["b"]}


@pytest.mark.parametrize("body", [{}, {"ids": "a"}, {"ids": [1]}])
def test_delete_messages_bad_body(client, body):
    assert post(client, "/commands/delete-messages", body).status_code == 400


def test_cleanup_removes_only_old_reported_messages(client, conn):
    add(client, message("old"), message("new"), message("unreported"))
    now = int(time.time())
    with conn:
        conn.execute(
            "UPDATE messages SET sent_ts = ?, reported_ts = ? WHERE id = 'old'",
            (now - 7200, now - 7200),
        )
        conn.execute(
            "UPDATE messages SET sent_ts = ?, reported_ts = ? WHERE id = 'new'", (now, now)
        )
    response = post(client, "/commands/cleanup-messages", {"older_than_seconds": 3600})
    assert response.json == {"ok": True, "removed": 1}
    assert client.post("/commands/cleanup-messages", headers=AUTH).json["removed"] == 0
    remaining = [m["id"] for m in get(client, "/messages").json["messages"]]
    assert remaining == ["new", "unreported"]


def test_cleanup_with_retention_zero_and_no_age_removes_nothing_and_says_so(make_config, conn):
    config = make_config(delivery_report_retention_seconds=0, smtp_host="127.0.0.1")
    client = create_app(config).test_client()
    add(client, message("old"))
    with conn:
        conn.execute("UPDATE messages SET sent_ts = 1, reported_ts = 1 WHERE id = 'old'")
    answer = client.post("/commands/cleanup-messages").json
    assert answer["removed"] == 0 and "keep forever" in answer["note"]
    assert client.post("/commands/cleanup-messages", json={"older_than_seconds": 60}).json == {
        "ok": True,
        "removed": 1,
    }


@pytest.mark.parametrize("value", [-1, "soon", True, 1.5, 10**320, 2**63])
def test_cleanup_bad_age_is_400(client, value):
    response = post(client, "/commands/cleanup-messages", {"older_than_seconds": value})
    assert response.status_code == 400


# -- commands -----------------------------------------------------------------------------------
def test_suspend_and_activate_are_persisted(client, conn, make_config):
    assert post(client, "/commands/suspend").json == {"ok": True, "active": False}
    assert store.settings.is_active(conn, True) is False
    fresh = create_app(make_config(api_token=TOKEN)).test_client()
    assert get(fresh, "/status").json["active"] is False
    assert post(client, "/commands/activate").json == {"ok": True, "active": True}
    assert get(fresh, "/status").json["active"] is True


def test_run_now_records_and_wakes(client, app, conn):
    run_dir = app.config["ASYNCMAIL"].run_dir
    dispatcher = wakeup.Waiter(run_dir, wakeup.DISPATCHER, "t1")
    reporter = wakeup.Waiter(run_dir, wakeup.REPORTER, "t2")
    try:
        before = time.time()
        response = post(client, "/commands/run-now")
        after = time.time()
        assert response.json == {"ok": True, "woken": 2}
        assert dispatcher.wait(2) and reporter.wait(2)
        assert before <= float(store.settings.get(conn, "run_now_at")) <= after  # its own time
    finally:
        dispatcher.close()
        reporter.close()


def test_status_reports_counts_and_processes(client, conn):
    add(client, message("a"), message("b", deferred_ts=time.time() + 600))
    store.heartbeats.beat(conn, "dispatcher-00", "dispatcher", 4242, time.time())
    status = get(client, "/status").json
    assert status["ok"] is True and status["active"] is True
    assert status["counts"] == {"queued": 1, "deferred": 1, "sending": 0, "sent": 0, "error": 0}
    assert status["processes"][0]["process"] == "dispatcher-00"
    assert isinstance(status["processes"][0]["ts"], int)


# -- accounts -----------------------------------------------------------------------------------
def test_account_create_replace_list_never_shows_password(client, conn):
    response = post(client, "/account", account())
    assert response.status_code == 200
    assert response.json["account"]["id"] == "acme"
    assert "password" not in json.dumps(response.json)
    post(client, "/account", account(port=2525, limit_per_minute=10))
    accounts = get(client, "/accounts").json["accounts"]
    assert [(a["id"], a["port"], a["limit_per_minute"]) for a in accounts] == [("acme", 2525, 10)]
    assert "password" not in json.dumps(accounts)
    assert store.accounts.get(conn, "default", "acme", with_password=True)["password"] == "pw"


def test_account_password_is_encrypted_with_secret_key(make_config, conn):
    client = create_app(make_config(api_token=TOKEN, secret_key="k3y")).test_client()
    secret = "a-password-of-some-length"  # "pw" could occur in the ciphertext by chance
    post(client, "/account", account(password=secret))
    stored = store.accounts.get(conn, "default", "acme", with_password=True)["password"]
    assert stored.startswith("enc:") and secret not in stored


@pytest.mark.parametrize(
    "body",
    [
        {"id": "x"},
        account(port="587"),
        account(port=0),
        account(use_tls=True),
        account(limit_behavior="drop"),
        account(id="a b"),
        account(ttl=10**30),
        account(limit_per_day=10**30),
        account(password="\ud800"),
    ],
)
def test_invalid_account_is_400(client, body):
    response = post(client, "/account", body)
    assert response.status_code == 400
    assert response.json["error"].startswith("Invalid account:")


def test_delete_account_refuses_while_unsent_unless_purge(client, conn):
    post(client, "/account", account())
    add(client, message("a", account_id="acme"))
    response = client.delete("/account/acme", headers=AUTH)
    assert response.status_code == 409 and "purge=true" in response.json["error"]
    assert get(client, "/accounts").json["accounts"] != []
    response = client.delete("/account/acme?purge=true", headers=AUTH)
    assert response.json == {"ok": True, "removed": "acme", "purged_messages": 1,
                             "in_flight": [], "awaiting_report": 0}  # fmt: skip
    assert get(client, "/accounts").json["accounts"] == []
    assert store.messages.get(conn, "default", "a", time.time()) is None


def test_delete_account_without_messages_and_unknown(client):
    post(client, "/account", account())
    assert client.delete("/account/acme", headers=AUTH).status_code == 200
    assert client.delete("/account/acme", headers=AUTH).status_code == 404


# -- metrics, openapi ----------------------------------------------------------------------------
def test_metrics_carry_the_reference_names(client):
    add(client, message())
    text = get(client, "/metrics").text
    for name in metrics.REFERENCE_NAMES:
        assert f"\n{name}" in text, name
    assert "asyncmail_pending_messages 1.0" in text
    assert 'asyncmail_http_requests_total{code="200",route="/commands/add-messages"}' in text


def test_openapi_is_served(client):
    document = get(client, "/openapi.json").json
    assert document["openapi"].startswith("3.")


# -- failures that are not the client's ------------------------------------------------------------
def test_locked_database_answers_503_and_stores_nothing(app, conn):
    client = create_app(app.config["ASYNCMAIL"], db_wait_seconds=0.05).test_client()
    conn.execute("BEGIN IMMEDIATE")
    try:
        response = add(client, message())
    finally:
        conn.execute("ROLLBACK")
    assert response.status_code == 503
    assert response.json["ok"] is False and "retry" in response.json["error"]
    assert response.headers["Retry-After"] == "5"
    assert store.messages.list_page(conn, "default", time.time())[0] == []


def test_a_bug_is_a_logged_json_500(app, caplog):
    def broken():
        raise RuntimeError("bug")

    app.add_url_rule("/broken", view_func=broken)
    response = app.test_client().get("/broken", headers=AUTH)
    assert response.status_code == 500
    assert response.json["ok"] is False and "logged" in response.json["error"]
    assert any(r.exc_info and "path=/broken" in r.getMessage() for r in caplog.records)
