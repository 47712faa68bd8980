"""Tenants in one process: same ids in two tenants end to end, tokens, suspension, tenant-wide
limits, deletion, the reporter's streams, the CLI and the status page (docs/tenants.md)."""

from __future__ import annotations

import logging
import time

import pytest

from common import metrics, operations, store
from common.enums import Next
from common.ratelimit import Limits
from reporter.client import SyncClient
from reporter.reporter import Reporter
from tests.support.dispatchers import make_dispatcher
from tests.support.factories import T0, Clock, account, message
from tests.support.ratelimit import assert_strict
from tests.support.tenancy import ADMIN, ADMIN_TOKEN, create_tenant, headers, outcomes
from tests.support.upstream import Upstream
from web.app import create_app

PATIENT = (5.0, 10.0)  # the reporter's HTTP timeouts: ample on a loaded machine


@pytest.fixture
def app(make_config):
    return create_app(make_config(api_token=ADMIN_TOKEN, smtp_host="127.0.0.1", smtp_port=9))


def drain(reporter: Reporter, now: float) -> None:
    for _ in range(50):
        if not reporter.run_once(now):
            return
    raise AssertionError("the reporter never went idle")


# -- same ids, two tenants ----------------------------------------------------------------------
def test_same_ids_in_two_tenants_go_their_own_ways(app, conn, make_config, smtp_server):
    """Account 'main' and message 'welcome-42' in both: each through its own server, each
    report to its own upstream, each visible to its owner only."""
    client = app.test_client()
    sinks = {"acme": smtp_server(), "globex": smtp_server()}
    with Upstream(token="acme-sync") as acme_up, Upstream(token="globex-sync") as globex_up:
        ups = {"acme": (acme_up, "acme-sync"), "globex": (globex_up, "globex-sync")}
        tokens = {
            tenant: create_tenant(client, tenant, client_sync_url=up.url, client_sync_token=secret)
            for tenant, (up, secret) in ups.items()
        }
        for tenant, token in tokens.items():
            own = headers(token)
            body = sinks[tenant].account("main")
            assert client.post("/account", json=body, headers=own).status_code == 200
            item = message("welcome-42", "main", subject=f"Welcome to {tenant}")
            added = client.post("/commands/add-messages", json={"messages": [item]}, headers=own)
            assert added.json["queued"] == 1
        clock = Clock(time.time())
        dispatcher = make_dispatcher(conn, make_config(), clock=clock)
        while dispatcher.run_once(clock()):
            pass
        dispatcher.close()
        quick = lambda c: SyncClient.from_config(c, timeout=PATIENT)  # noqa: E731
        reporter = Reporter(make_config(), conn, clock(), make_client=quick)
        drain(reporter, clock())
        reporter.close()
        for tenant, (up, _) in ups.items():
            assert sinks[tenant].subjects() == [f"Welcome to {tenant}"]
            [item] = up.items()
            assert (item["id"], item["account_id"], item["status"]) == (
                "welcome-42",
                "main",
                "sent",
            )
            assert item["tenant_id"] == tenant
            assert up.requests[0].headers["Authorization"] == f"Bearer {ups[tenant][1]}"
    for tenant, token in tokens.items():
        record = client.get("/messages/welcome-42", headers=headers(token)).json
        assert record["message"]["subject"] == f"Welcome to {tenant}"
    assert client.get("/messages/welcome-42", headers=ADMIN).status_code == 404  # default's
    mine = client.get("/messages", headers=headers(tokens["acme"])).json["messages"]
    assert [m["id"] for m in mine] == ["welcome-42"]


# -- tokens -------------------------------------------------------------------------------------
def test_a_rotated_token_stops_at_once_and_no_token_is_shown_again(app, conn, caplog):
    client = app.test_client()
    with caplog.at_level(logging.DEBUG):
        first = create_tenant(client, "acme")
        assert client.get("/status", headers=headers(first)).status_code == 200
        rotated = client.post("/tenants/acme/rotate-token", headers=ADMIN)
        second = rotated.json["token"]
        assert second != first and second.startswith("amt_") and len(second) >= 40
        assert client.get("/status", headers=headers(first)).status_code == 401
        assert client.get("/status", headers=headers(second)).json["tenant"] == "acme"
        answers = [
            client.get("/tenants", headers=ADMIN).get_data(as_text=True),
            client.get("/tenants/acme", headers=ADMIN).get_data(as_text=True),
            client.patch("/tenants/acme", json={"name": "A"}, headers=ADMIN).get_data(as_text=True),
            client.get("/status", headers=ADMIN).get_data(as_text=True),
            client.get("/metrics", headers=ADMIN).get_data(as_text=True),
        ]
    for token in (first, second):
        assert not any(token in text for text in answers)
        assert token not in caplog.text
        assert token not in metrics.render(lambda: conn, app.config["ASYNCMAIL"]).decode()
    stored = store.tenants.token_hash(conn, "acme")
    assert stored and second not in stored and len(stored) == 64  # its SHA-256 only


def test_report_secrets_are_sealed_at_rest_and_used_unsealed(make_config, conn):
    config = make_config(secret_key="k" * 32)  # ASYNCMAIL_SECRET_KEY
    client = create_app(config, api_token=ADMIN_TOKEN).test_client()
    with Upstream(token="upstream-secret") as upstream:
        sync = {"client_sync_token": "upstream-secret", "client_sync_signing_key": "sign-me"}
        create_tenant(client, "acme", client_sync_url=upstream.url, **sync)
        [row] = [r for r in store.tenants.report_targets(conn) if r["id"] == "acme"]
        assert row["client_sync_token"].startswith("enc:") and "upstream-secret" not in str(row)
        assert row["client_sync_signing_key"].startswith("enc:")
        shown = client.get("/tenants/acme", headers=ADMIN).json["tenant"]
        assert shown["has_token"] and shown["signed"] and "upstream-secret" not in str(shown)
        reporter = Reporter(config, conn, T0)
        reporter.run_once(T0)  # its stream starts
        reporter.run_once(T0 + 10_000)  # the idle report: auth and signature as configured
        request = upstream.wait_for_requests(1)[0]
        reporter.close()
    assert request.status == 200 and request.headers["X-AsyncMail-Signature"]


def test_without_an_api_token_loopback_is_the_admin_and_tenant_tokens_still_scope(make_config):
    client = create_app(make_config(api_token=None)).test_client()
    made = client.post("/tenants", json={"id": "acme", "name": "Acme"})
    assert made.status_code == 201
    token = made.json["token"]
    assert client.get("/status", headers=headers(token)).json["tenant"] == "acme"
    assert client.get("/tenants", headers=headers(token)).status_code == 403
    assert client.get("/status", headers=headers("amt_not-a-real-one")).status_code == 401
    assert client.get("/status", headers={"X-Tenant": "acme"}).json["tenant"] == "acme"
    remote = client.get(
        "/status", headers=headers(token), environ_base={"REMOTE_ADDR": "192.0.2.9"}
    )
    assert remote.status_code == 401  # loopback only, whatever the token


# -- dispatch -----------------------------------------------------------------------------------
def test_a_suspended_tenant_stops_only_its_own_mail(app, conn, make_config, smtp_server):
    client, peer = app.test_client(), smtp_server()
    for tenant in ("acme", "globex"):
        token = create_tenant(client, tenant)
        client.post("/account", json=peer.account("main"), headers=headers(token))
        items = [message(f"{tenant}-{n}", "main") for n in range(3)]
        client.post("/commands/add-messages", json={"messages": items}, headers=headers(token))
    assert client.post("/tenants/acme/suspend", headers=ADMIN).json["tenant"]["active"] is False
    dispatcher = make_dispatcher(conn, make_config(), clock=Clock(time.time()))
    while dispatcher.run_once(time.time()):
        pass
    assert sorted(peer.subjects()) == ["globex-0", "globex-1", "globex-2"]
    client.post("/tenants/acme/activate", headers=ADMIN)
    while dispatcher.run_once(time.time()):
        pass
    dispatcher.close()
    assert len(peer.subjects()) == 6


def test_claims_go_round_robin_across_tenants_then_accounts():
    def rows(tenant, account, n):
        return [{"tenant_id": tenant, "id": f"{tenant}.{account}.{i}"} for i in range(n)]

    by_account = {
        ("b", "x"): rows("b", "x", 3),
        ("a", "x"): rows("a", "x", 2),
        ("a", "y"): rows("a", "y", 2),
        ("default", None): rows("default", "-", 1),
    }
    order = [row["id"] for row in store.claims.fair_order(by_account)]
    assert order == [
        "a.x.0", "b.x.0", "default.-.0", "a.y.0", "b.x.1", "a.x.1", "b.x.2", "a.y.1",
    ]  # fmt: skip


def test_a_tenant_wide_limit_holds_across_accounts_and_dispatchers(conn, make_config, smtp_server):
    """limit_per_minute=4 for the tenant, two accounts, three dispatchers on one clock: no
    minute of the recorded send starts holds more than 4, over five minutes of sends."""
    config = make_config()
    peer = smtp_server()
    client = create_app(config, api_token=ADMIN_TOKEN).test_client()
    token = create_tenant(client, "acme", limit_per_minute=4)
    for account_id in ("one", "two"):
        client.post("/account", json=peer.account(account_id), headers=headers(token))
    items = [message(f"m{n}", ("one", "two")[n % 2]) for n in range(20)]
    client.post("/commands/add-messages", json={"messages": items}, headers=headers(token))
    clock = Clock(time.time())
    dispatchers = [make_dispatcher(conn, config, clock=clock, name=f"d{n}") for n in range(3)]
    for _ in range(5 * 60):  # five minutes, a second at a time
        for dispatcher in dispatchers:
            dispatcher.run_once(clock())
        clock.t += 1
    for dispatcher in dispatchers:
        dispatcher.close()
    starts = store.attempts.tenant_send_starts(conn, "acme", 0)
    assert len(peer.received) == len(starts) == 20
    assert_strict(starts, Limits(per_minute=4))
    accounts = {store.attempts.send_starts(conn, "acme", a, 0) != [] for a in ("one", "two")}
    assert accounts == {True}  # both accounts sent, under the one tenant-wide window


def test_a_tenant_wide_limit_may_reject(conn, make_config, smtp_server):
    config, peer = make_config(), smtp_server()
    client = create_app(config, api_token=ADMIN_TOKEN).test_client()
    token = create_tenant(client, "acme", limit_per_minute=1, limit_behavior="reject")
    client.post("/account", json=peer.account("main"), headers=headers(token))
    items = [message(f"m{n}", "main") for n in range(3)]
    client.post("/commands/add-messages", json={"messages": items}, headers=headers(token))
    dispatcher = make_dispatcher(conn, config, clock=Clock(time.time()))
    dispatcher.run_once(time.time())
    dispatcher.close()
    statuses = [store.messages.get(conn, "acme", f"m{n}", time.time()) for n in range(3)]
    assert sorted(s["status"] for s in statuses) == ["error", "error", "sent"]
    assert {s["error"] for s in statuses if s["error"]} == {"tenant-wide rate limit exceeded"}


# -- deletion -----------------------------------------------------------------------------------
def test_deleting_a_tenant_waits_for_its_mail_and_reports_unless_purged(app, conn):
    client = app.test_client()
    token = create_tenant(client, "acme")
    client.post("/account", json=account("main"), headers=headers(token))
    items = [message("held", "main"), message("queued", "main"), message("done", "main")]
    client.post("/commands/add-messages", json={"messages": items}, headers=headers(token))
    outcomes(conn, "acme", {"done": Next.SENT})
    busy = client.delete("/tenants/acme", headers=ADMIN)
    assert busy.status_code == 409 and "2 unsent messages and 1 outcomes" in busy.json["error"]
    store.claims.claim(conn, "dispatcher-x", time.time(), 60, 1, False)  # holds one row
    gone = client.delete("/tenants/acme?purge=true", headers=ADMIN).json
    assert gone["purged_messages"] == 2 and len(gone["in_flight"]) == 1
    assert client.get("/status", headers=headers(token)).status_code == 401  # token gone
    assert client.get("/tenants/acme", headers=ADMIN).status_code == 404
    again = client.post("/tenants", json={"id": "acme", "name": "A"}, headers=ADMIN)
    assert again.status_code == 409 and "being removed" in again.json["error"]
    store.claims.release(conn, [("acme", gone["in_flight"][0])], "dispatcher-x", time.time())
    assert store.tenants.drop_tombstones(conn, time.time()) == 1
    assert conn.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 0
    assert (
        client.post("/tenants", json={"id": "acme", "name": "A"}, headers=ADMIN).status_code == 201
    )


# -- the CLI ------------------------------------------------------------------------------------
def test_cli_tenants_and_tenant_scoped_commands(run, monkeypatch):
    monkeypatch.setenv("SYNC_TOKEN", "from-the-environment")
    code, out, _ = run("tenants", "add", "acme", "--name", "Acme", "--report-url",
                       "https://acme.example/sync", "--report-token-env", "SYNC_TOKEN",
                       "--limit-per-hour", "100", "--json")  # fmt: skip
    assert code == 0
    token = __import__("json").loads(out)["token"]
    assert token.startswith("amt_")
    code, out, _ = run("tenants", "list")
    assert code == 0 and "acme" in out and "100/hour" in out and token not in out
    assert run("tenants", "show", "acme")[1].count("has_token") == 1
    code, out, _ = run("tenants", "rotate-token", "acme")
    assert code == 0 and "amt_" in out and token not in out
    assert run("accounts", "add", "main", "--host", "h.example", "--port", "25",
               "--tenant", "acme")[0] == 0  # fmt: skip
    assert (
        run(
            "send",
            "--tenant",
            "acme",
            "--account",
            "main",
            "--id",
            "w",
            "--from",
            "a@acme.example",
            "--to",
            "b@x.example",
            "--subject",
            "s",
            "--body",
            "b",
        )[0]
        == 0
    )
    assert "w" in run("messages", "list", "--tenant", "acme")[1]
    assert run("messages", "show", "w")[0] == 1  # not in the default tenant
    assert run("suppressions", "add", "x@y.org", "--tenant", "acme")[0] == 0
    assert "x@y.org" not in run("suppressions", "list")[1]
    assert run("accounts", "list", "--tenant", "nope")[0] == 1
    assert run("tenants", "suspend", "acme")[0] == 0
    assert "SUSPENDED" in run("tenants", "list")[1]
    assert run("tenants", "activate", "acme")[0] == 0
    code, _, err = run("tenants", "delete", "acme")
    assert code == 1 and "--purge" in err
    assert run("tenants", "delete", "acme", "--purge")[0] == 0
    assert "acme" not in run("tenants", "list")[1]


# -- the status page ----------------------------------------------------------------------------
def test_the_status_page_shows_a_tenant_only_its_own(app, conn):
    client = app.test_client()
    tokens = {tenant: create_tenant(client, tenant) for tenant in ("acme", "globex")}
    for tenant, token in tokens.items():
        client.post("/account", json=account(f"{tenant}-smtp"), headers=headers(token))
    origin = {"Origin": "http://localhost"}
    assert (
        client.post("/ui/login", data={"token": tokens["acme"]}, headers=origin).status_code == 303
    )
    page = client.get("/ui").get_data(as_text=True)
    assert "acme/acme-smtp" in page and "globex" not in page and 'id="tenant-picker"' not in page
    assert "globex" not in client.get("/ui?tenant=globex").get_data(as_text=True)
    client.post("/tenants/acme/rotate-token", headers=ADMIN)
    assert client.get("/ui").status_code == 303  # a rotated token ends its sessions
    admin = app.test_client()
    admin.post("/ui/login", data={"token": ADMIN_TOKEN}, headers=origin)
    everything = admin.get("/ui").get_data(as_text=True)
    assert 'id="tenant-picker"' in everything and "acme/acme-smtp" in everything
    assert "globex/globex-smtp" in everything
    picked = admin.get("/ui?tenant=globex").get_data(as_text=True)
    assert "globex/globex-smtp" in picked and "acme/acme-smtp" not in picked


def test_the_admin_naming_an_unknown_tenant_gets_404(app):
    answer = app.test_client().get("/status", headers={**ADMIN, "X-Tenant": "nobody"})
    assert answer.status_code == 404
    assert answer.json["error"] == "No tenant 'nobody'; GET /tenants lists them."


def test_in_test_mode_a_tenants_run_now_sends_its_mail_only(app, conn, make_config, smtp_server):
    client = app.test_client()
    config = make_config(test_mode=True)
    sinks = {"acme": smtp_server(), "globex": smtp_server()}
    for tenant, sink in sinks.items():
        own = headers(create_tenant(client, tenant))
        assert client.post("/account", json=sink.account("main"), headers=own).status_code == 200
        item = message(f"{tenant}-1", "main", subject=tenant)
        assert client.post("/commands/add-messages", json={"messages": [item]},
                           headers=own).json["queued"] == 1  # fmt: skip
    dispatcher = make_dispatcher(conn, config, clock=Clock(time.time()))
    assert dispatcher.run_once(time.time()) is False  # test_mode: nothing before a run-now
    operations.run_now(conn, config, time.time(), tenant="acme")
    while dispatcher.run_once(time.time()):
        pass
    assert (sinks["acme"].subjects(), sinks["globex"].subjects()) == (["acme"], [])
    operations.run_now(conn, config, time.time())  # the admin's: the whole service
    while dispatcher.run_once(time.time()):
        pass
    assert sinks["globex"].subjects() == ["globex"]
    dispatcher.close()
