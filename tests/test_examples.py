"""The examples in examples/, each run against the real stack and a real aiosmtpd server.

One stack serves the module: its reports go, signed, to the Flask example application, which
reaches the service through a proxy that can fail requests the way a load balancer does.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import subprocess
import time

import pytest
import requests

from tests.support.procs import ROOT, free_port, start, stop, wait_for
from tests.support.proxy import FlakyProxy
from tests.support.smtp import start_server
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

EXAMPLES = ROOT / "examples"
TOKEN = "examples-api-token"
SIGNING_KEY = "examples-signing-key"
ADD = "/commands/add-messages"


def load_client_module():
    """examples/asyncmail_client.py, imported as an application would import its copy."""
    spec = importlib.util.spec_from_file_location(
        "asyncmail_client", EXAMPLES / "asyncmail_client.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = load_client_module()


class World:
    """The stack, its SMTP sink, the proxy in front of the API and the Flask application."""

    def __init__(self, tmp, sink, stack, proxy, app_url):
        self.tmp, self.sink, self.stack, self.proxy, self.app_url = tmp, sink, stack, proxy, app_url

    def received(self, subject: str) -> list:
        return [r for r in self.sink.received if r.message()["Subject"] == subject]

    def client(self, url: str | None = None, retries: int = 2) -> example.MailClient:
        return example.MailClient(url or self.proxy.url, token=TOKEN, retries=retries)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("examples")
    app_port = free_port()
    sink = start_server("plain")
    stack = Stack(
        tmp / "var",
        port=free_port(),
        dispatchers=1,
        api_token=TOKEN,
        client_sync_url=f"http://127.0.0.1:{app_port}/proxy_sync",
        client_sync_signing_key=SIGNING_KEY,
    )
    app = None
    try:
        stack.start()
        with FlakyProxy(stack.url) as proxy:
            example.MailClient(stack.url, TOKEN).save_account(**sink.account("sink"))
            env = {
                **stack.env,
                "PYTHONPATH": str(EXAMPLES),
                "PORT": str(app_port),
                "OUTBOX_DB": str(tmp / "outbox.db"),
                "REPORT_SIGNING_KEY": SIGNING_KEY,
                "MAIL_API_URL": proxy.url,
                "MAIL_API_TOKEN": TOKEN,
                "MAIL_API_RETRIES": "1",
                "MAIL_ACCOUNT": "sink",
                "MAIL_FROM": "Shop <orders@shop.example.com>",
            }
            app = start("flask_app", env, tmp / "flask_app.log")
            app_url = f"http://127.0.0.1:{app_port}"
            wait_for(lambda: _answers(app_url + "/outbox"), timeout=30, message="flask app")
            yield World(tmp, sink, stack, proxy, app_url)
    finally:
        if app is not None:
            stop(app)
        assert not stack.stop()
        sink.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.ConnectionError:
        return False


def outbox_row(world: World, mail_id: str) -> dict:
    return requests.get(f"{world.app_url}/outbox/{mail_id}", timeout=5).json()


def signed(body: bytes, key: str = SIGNING_KEY, ts: int | None = None) -> dict:
    ts_text = str(int(time.time()) if ts is None else ts)
    digest = hmac.new(key.encode(), ts_text.encode() + body, hashlib.sha256).hexdigest()
    return {"X-AsyncMail-Timestamp": ts_text, "X-AsyncMail-Signature": digest,
            "Content-Type": "application/json"}  # fmt: skip


# -- (1) the Flask application -----------------------------------------------------------------
def test_flask_app_row_goes_from_pending_to_sent_by_a_signed_report(world):
    answer = requests.post(
        world.app_url + "/send",
        json={"to": "ann@example.org", "subject": "flask-1", "body": "Your order shipped."},
        timeout=30,
    )
    assert answer.status_code == 201 and answer.json()["status"] == "queued"
    mail_id = answer.json()["id"]

    row = wait_for(lambda: (r := outbox_row(world, mail_id))["status"] == "sent" and r, 30)
    assert row["sent_ts"] and row["error"] is None
    [got] = world.received("flask-1")
    record = world.client().message(mail_id)
    assert got.message()["Message-ID"] == record["message_id_header"]
    assert record["message_id_header"].endswith("@shop.example.com>")  # the sender's domain


def test_flask_app_refuses_a_report_without_a_valid_signature(world):
    answer = requests.post(
        world.app_url + "/send",
        json={"to": "bob@example.org", "subject": "flask-2", "body": "x"},
        timeout=30,
    )
    mail_id = answer.json()["id"]
    wait_for(lambda: outbox_row(world, mail_id)["status"] == "sent", 30)
    forged = json.dumps(
        {
            "delivery_report": [
                {
                    "id": mail_id,
                    "status": "error",
                    "error": "forged",
                    "sent_ts": None,
                    "error_ts": 1,
                }
            ]
        }  # fmt: skip
    ).encode()
    for headers in (
        signed(forged, key="not-the-key"),
        signed(forged, ts=int(time.time()) - 3600),  # a replay of an old request
        {"Content-Type": "application/json"},
    ):
        sent = requests.post(world.app_url + "/proxy_sync", data=forged, headers=headers, timeout=5)
        assert sent.status_code == 401
    assert outbox_row(world, mail_id)["status"] == "sent"


def test_flask_app_keeps_rows_pending_while_the_service_is_away_then_flushes(world):
    world.proxy.fail(2)  # the first try and its one retry
    answer = requests.post(
        world.app_url + "/send",
        json={"to": "cy@example.org", "subject": "flask-3", "body": "x"},
        timeout=30,
    )
    assert answer.status_code == 201 and answer.json()["status"] == "pending"
    mail_id = answer.json()["id"]
    assert requests.post(world.app_url + "/flush", timeout=30).json() == {"queued": 1}
    wait_for(lambda: outbox_row(world, mail_id)["status"] == "sent", 30)
    assert len(world.received("flask-3")) == 1


# -- (2) the curl script -----------------------------------------------------------------------
def test_curl_script_account_attachment_status_and_record(world):
    env = {
        "PATH": "/usr/bin:/bin",
        "MAIL_API_URL": world.stack.url,
        "MAIL_API_TOKEN": TOKEN,
        "SMTP_HOST": world.sink.host,
        "SMTP_PORT": str(world.sink.port),
        "TO": "dee@example.org",
        "MESSAGE_ID": "curl-demo-1",
    }
    done = subprocess.run(
        ["sh", str(EXAMPLES / "curl_demo.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("== sent")
    assert '"queued":1' in done.stdout and '"counts"' in done.stdout
    [got] = [r for r in world.sink.received if r.message()["To"] == "dee@example.org"]
    [part] = list(got.message().iter_attachments())
    assert part.get_filename() == "order.csv"
    assert part.get_content() == "order,amount\n42,19.90\n"


# -- (3) the Python client module --------------------------------------------------------------
def test_client_retries_a_503_and_a_cut_connection(world):
    client = world.client(retries=3)
    world.proxy.fail(1)
    world.proxy.cut(1)
    client.send("client-retry-1", sender="a@example.com", to="eve@example.org",
                subject="client-1", body="x", account_id="sink")  # fmt: skip
    assert world.proxy.outcomes(ADD)[-3:] == ["503", "cut", "200"]
    assert client.wait_until_done("client-retry-1")["status"] == "sent"
    assert len(world.received("client-1")) == 1


def test_client_retry_after_a_lost_answer_sends_once(world):
    client = world.client()
    world.proxy.lose(1)  # stored by the service, but the client never hears so
    client.send("client-lost-1", sender="a@example.com", to="fay@example.org",
                subject="client-2", body="x", account_id="sink")  # fmt: skip
    lost, again = world.proxy.outcomes(ADD)[-2:]
    # 200: replaced before a dispatcher took it; 400: refused as in flight or already sent
    assert lost == "lost" and again in ("200", "400")
    record = client.wait_until_done("client-lost-1")
    assert record["status"] == "sent" and record["attempts"] == 1
    assert len(world.received("client-2")) == 1  # the id made the second request harmless


def test_client_gives_up_after_its_retries_and_reports_refusals(world):
    client = world.client(retries=1)
    world.proxy.fail(2)
    with pytest.raises(example.MailError) as busy:
        client.send("client-busy-1", sender="a@example.com", to="x@example.org",
                    subject="s", body="x", account_id="sink")  # fmt: skip
    assert busy.value.status == 503
    with pytest.raises(example.MailError) as refused:
        client.send("client-bad-1", sender="a@example.com", to="not-an-address",
                    subject="s", body="x", account_id="sink")  # fmt: skip
    assert "not an email address" in str(refused.value)
    unreachable = example.MailClient(f"http://127.0.0.1:{free_port()}", TOKEN, retries=1)
    with pytest.raises(requests.ConnectionError):
        unreachable.status()


def test_client_module_stays_small():
    lines = (EXAMPLES / "asyncmail_client.py").read_text().splitlines()
    assert len(lines) <= 120  # "about a hundred lines": one file an application copies
