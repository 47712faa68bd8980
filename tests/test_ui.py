"""The status page at /ui: login, cookie, content, no secrets (Flask client), and once in
headless Chromium against a running stack with live data."""

from __future__ import annotations

import signal
import struct
import time

import pytest
import requests

from common import store
from common.enums import Next, Outcome
from common.store.bounces import Event, Suppress
from common.store.claims import Attempt, Transition
from tests.support import procs
from tests.support.chromium import CHROMIUM, Chromium
from tests.support.db import enqueue
from tests.support.factories import account, message
from tests.support.smtp import Behavior, start_server
from tests.support.stack import Stack
from web import session
from web.app import create_app

TOKEN = "ui-token-9f2c"
PASSWORD = "account-password-77"
SECRETS = (TOKEN, PASSWORD, "sync-password-31", "secret-key-value-0123456789")
SAME = {"Origin": "http://localhost"}


@pytest.fixture
def cfg(make_config):
    return make_config(
        api_token=TOKEN,
        smtp_host="127.0.0.1",
        smtp_port=2525,
        client_sync_url="https://sync.example.org/report",
        client_sync_user="u",
        client_sync_password="sync-password-31",
        secret_key="secret-key-value-0123456789",
    )


@pytest.fixture
def client(cfg):
    return create_app(cfg).test_client()


def logged_in(client):
    answer = client.post("/ui/login", data={"token": TOKEN}, headers=SAME)
    assert answer.status_code == 303 and answer.headers["Location"] == "/ui"
    return answer


def live_data(conn, cfg) -> None:
    """An account, queued, sent and failed messages, a live and a stale process."""
    now = time.time()
    client = create_app(cfg).test_client()
    body = account("acme", password=PASSWORD, limit_per_minute=30)
    assert client.post("/account", json=body, headers={"X-API-Token": TOKEN}).status_code == 200
    enqueue(conn, cfg, message("ok", "acme"), message("bad", "acme"), message("q"), now=now - 10)
    store.claims.claim(conn, "dispatcher-00", now - 5, 60, 10, True)
    sent = Attempt("ok", "acme", now - 5, Outcome.SENT, 250, "2.0.0 queued", 0.01)
    failed = Attempt("bad", "acme", now - 4, Outcome.PERMANENT, 550, "5.1.1 <x@y>: no such user")
    store.claims.record(
        conn,
        [Transition(sent, Next.SENT, now - 5), Transition(failed, Next.ERROR, now - 4, error="x")],
        "dispatcher-00",
        "dispatcher-00",
    )
    store.claims.release(conn, [("default", "q")], "dispatcher-00", now)
    store.heartbeats.beat(conn, "dispatcher-00", "dispatcher", 11, now)
    store.heartbeats.beat(conn, "reporter", "reporter", 12, now - 600)


# -- access ------------------------------------------------------------------------------------
def test_the_page_needs_a_session(client):
    answer = client.get("/ui")
    assert answer.status_code == 303 and answer.headers["Location"] == "/ui/login"
    form = client.get("/ui/login")
    assert form.status_code == 200 and form.mimetype == "text/html"
    html = form.get_data(as_text=True)
    assert 'name="token"' in html and 'type="password"' in html and 'method="post"' in html
    assert TOKEN not in html


def test_login_sets_a_strict_http_only_cookie_that_is_not_the_token(client):
    answer = logged_in(client)
    cookie = answer.headers["Set-Cookie"]
    for flag in ("HttpOnly", "SameSite=Strict", "Path=/ui", f"Max-Age={session.SESSION_SECONDS}"):
        assert flag in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    assert TOKEN not in value and value
    page = client.get("/ui")
    assert page.status_code == 200 and page.mimetype == "text/html"
    # the cookie opens the page, not the API
    assert client.get("/status").status_code == 401


def test_wrong_token_is_refused_without_a_cookie(client):
    answer = client.post("/ui/login", data={"token": "guess"}, headers=SAME)
    assert answer.status_code == 401 and "Wrong token" in answer.get_data(as_text=True)
    assert "Set-Cookie" not in answer.headers
    assert client.get("/ui").status_code == 303


@pytest.mark.parametrize(
    "headers",
    [{}, {"Origin": "null"}, {"Origin": "http://evil.example"}, {"Referer": "http://evil/ui"}],
    ids=["none", "null", "other-site", "other-referer"],
)
def test_login_and_logout_refuse_other_origins(client, headers):
    answer = client.post("/ui/login", data={"token": TOKEN}, headers=headers)
    assert answer.status_code == 403 and "Set-Cookie" not in answer.headers
    logged_in(client)
    out = client.post("/ui/logout", headers=headers)
    assert out.status_code == 403 and client.get("/ui").status_code == 200


def test_referer_of_this_site_is_enough(client):
    headers = {"Referer": "http://localhost/ui/login"}
    assert client.post("/ui/login", data={"token": TOKEN}, headers=headers).status_code == 303


def test_logout_ends_the_session(client):
    logged_in(client)
    out = client.post("/ui/logout", headers=SAME)
    assert out.status_code == 303 and out.headers["Location"] == "/ui/login"
    assert "asyncmail_ui=;" in out.headers["Set-Cookie"]
    assert client.get("/ui").status_code == 303


def test_tampered_expired_or_foreign_cookies_open_nothing(client, cfg, conn):
    logged_in(client)
    value = client.get_cookie(session.COOKIE, path="/ui").value
    expires, who, mac = value.split(".")
    assert who == ""  # the admin's session
    flipped = mac[:-1] + ("1" if mac.endswith("0") else "0")  # one hex digit changed
    forgeries = (f"{expires}.{who}.{flipped}", f"{int(expires) + 1}.{who}.{mac}",
                 f"{expires}.default.{mac}", TOKEN, "garbage")  # fmt: skip
    for forged in forgeries:
        client.set_cookie(session.COOKIE, forged, path="/ui")
        assert client.get("/ui").status_code == 303, forged
    other = create_app(cfg, api_token="another-token").test_client()
    other.set_cookie(session.COOKIE, value, path="/ui")
    assert other.get("/ui").status_code == 303  # a new api_token ends every session
    past = f"{int(time.time()) - 1}..{session._mac(conn, TOKEN, '', int(time.time()) - 1)}"
    client.set_cookie(session.COOKIE, past, path="/ui")
    assert client.get("/ui").status_code == 303


def test_without_a_token_the_loopback_rule_applies(cfg):
    client = create_app(cfg, api_token=None).test_client()
    assert client.get("/ui").status_code == 200
    assert client.get("/ui/login").status_code == 303
    remote = client.get("/ui", environ_base={"REMOTE_ADDR": "192.0.2.1"})
    assert remote.status_code == 401 and remote.mimetype == "application/json"


def test_api_errors_stay_json(client):
    logged_in(client)
    assert client.get("/nope").mimetype == "application/json"
    assert client.get("/ui/nope").mimetype == "application/json"


# -- content -----------------------------------------------------------------------------------
def test_the_page_shows_queue_charts_failures_accounts_and_processes(client, cfg, conn):
    live_data(conn, cfg)
    logged_in(client)
    answer = client.get("/ui")
    html = answer.get_data(as_text=True)
    assert '<meta http-equiv="refresh"' in html
    for text in (
        "Queue by status and priority",
        "Sent per minute",
        "Failed attempts per minute",
        "Recent failures",
        "Processes",
        "Accounts: limits and current usage",
    ):
        assert text in html, text  # fmt: skip
    assert html.count("<svg") == 2 and "<rect" in html
    assert "5.1.1 &lt;x@y&gt;: no such user" in html  # the SMTP reply, escaped
    assert "1 / 30" in html or "2 / 30" in html  # per-minute usage against the limit
    assert "Account acme is failing" in html
    assert "reporter (reporter) last beat" in html  # the stale process is flagged
    assert 'class="bad"><td>reporter' in html
    assert "(default [smtp])" in html


def test_the_bounce_panel_shows_the_list_and_the_last_days_bounces(make_config, conn):
    cfg = make_config(api_token=TOKEN, smtp_host="127.0.0.1", imap_host="imap.example.org",
                      imap_user="u", imap_password="imap-pw-5521", suppression=True)  # fmt: skip
    client = create_app(cfg).test_client()
    now = time.time()
    enqueue(conn, cfg, message("m1"), now=now)
    event = Event("m1", "gone@example.org", "hard", "failed", "5.1.1", "smtp; 550 5.1.1 <gone>")
    gone = Suppress("gone@example.org", "hard_bounce", "5.1.1", None)
    store.bounces.record_mail(conn, "k", "processed", "rfc3464", [event], [gone], now, "default")
    store.suppressions.add(conn, "default", "quiet@example.org", "manual", None, None, now)
    store.heartbeats.beat(conn, "dispatcher-00", "dispatcher", 11, now)
    store.heartbeats.beat(conn, "reporter", "reporter", 12, now)
    logged_in(client)
    html = client.get("/ui").get_data(as_text=True)
    panel = html[html.index('id="bounces"') :]
    assert "Bounce mailbox read by the bouncer" in panel and "suppression at send time" in panel
    assert "gone@example.org" in panel and "smtp; 550 5.1.1 &lt;gone&gt;" in panel
    assert '<td class="n">1</td><td class="n">0</td>\n      <td class="n">1</td>' in panel
    assert "No live bouncer: none has beaten" in html  # configured, and no bouncer has beaten
    assert "No live dispatcher" not in html
    assert "imap-pw-5521" not in html


def test_no_secret_is_ever_shown(client, cfg, conn):
    live_data(conn, cfg)
    logged_in(client)
    for path in ("/ui", "/ui/login"):
        html = client.get(path).get_data(as_text=True)
        for secret in SECRETS:
            assert secret not in html, (path, secret)
    assert "sync.example.org" not in client.get("/ui").get_data(as_text=True)


def test_security_headers(client):
    logged_in(client)
    headers = client.get("/ui").headers
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"


# -- in a real browser -------------------------------------------------------------------------
def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_chromium_renders_the_page_of_a_running_stack(var_dir, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    sink = start_server()
    refusing = start_server(behavior=Behavior(data_reply="554 5.7.1 relaying denied"))
    stack = Stack(var_dir, port=procs.free_port(), dispatchers=1, api_token=TOKEN,
                  smtp_host=sink.host, smtp_port=sink.port)  # fmt: skip
    browser = None
    try:
        stack.start(expect_running=("web", "dispatcher-00", "reporter"))
        live_traffic(stack, sink, refusing)
        browser = Chromium(tmp_path / "profile")
        browser.navigate(stack.url + "/ui")  # no session: the login form
        assert browser.evaluate("location.pathname") == "/ui/login"
        browser.submit(
            f"document.getElementById('token').value = {TOKEN!r};"
            "document.querySelector('form').submit()"
        )
        assert browser.evaluate("location.pathname") == "/ui"
        dom = browser.dom()
        png = browser.screenshot(tmp_path / "ui.png")
    finally:
        if browser is not None:
            browser.close()
        stack.stop(signal.SIGTERM)
        sink.stop()
        refusing.stop()
    assert png_size(png) == (1280, 1000) and len(png) > 20_000
    for text in (
        "async-mail-service",
        "Queue by status and priority",
        "dispatcher-00",
        "Account bulk is failing",
        "554",
        "relaying denied",
        "Sent per minute",
    ):
        assert text in dom, text  # fmt: skip
    assert TOKEN not in dom and PASSWORD not in dom


def live_traffic(stack: Stack, sink, refusing) -> None:
    """Sends that succeed and an account whose server refuses, through the API."""
    headers = {"X-API-Token": TOKEN}

    def post(path: str, body: dict) -> dict:
        answer = requests.post(stack.url + path, json=body, headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()

    post("/account", refusing.account("bulk", password=PASSWORD, limit_per_minute=500))
    post("/account", sink.account("main", limit_per_second=50, limit_per_hour=10000))
    post("/commands/add-messages", {"messages": [message(f"n{i}") for i in range(30)]})
    post("/commands/add-messages", {"messages": [message(f"m{i}", "main") for i in range(40)]})
    post("/commands/add-messages", {"messages": [message(f"b{i}", "bulk") for i in range(5)]})
    procs.wait_for(lambda: len(sink.received) >= 70, timeout=60, message="70 messages sent")
    procs.wait_for(
        lambda: (
            requests.get(stack.url + "/status", headers=headers, timeout=10).json()["counts"][
                "error"
            ]
            >= 5
        ),
        message="the refused messages in error",
    )


def test_the_page_of_an_unknown_tenant_is_404(client):
    logged_in(client)
    answer = client.get("/ui?tenant=nobody")
    assert answer.status_code == 404 and "No tenant 'nobody'." in answer.get_data(as_text=True)
