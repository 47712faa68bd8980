"""Attachment fetching from real peers: a local HTTP server and moto's standalone S3."""

from __future__ import annotations

import base64
import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from common import store
from common.models import Attachment
from dispatcher.attachments import MAX_REDIRECTS, AttachmentError, Fetcher, _is_public
from tests.support import procs
from tests.support.db import attempts, enqueue, row
from tests.support.dispatchers import make_dispatcher
from tests.support.factories import T0, message
from tests.support.hostile import DrippingSource, MetadataStandIn

PAYLOAD = bytes(range(256)) * 40  # 10 KiB of every byte value


class Files(BaseHTTPRequestHandler):
    """Routes: /file, /big (no Content-Length), /status/N, /hop/N (N redirects to /file),
    /away (redirects to http://internal.invalid/file)."""

    hits: dict[str, int] = {}

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path == "/file":
            self._send(200, PAYLOAD, length=True)
        elif self.path == "/big":
            self._send(200, b"x" * 5000, length=False)
        elif self.path.startswith("/status/"):
            self._send(int(self.path.rsplit("/", 1)[1]), b"nope", length=True)
        elif self.path == "/away":  # a redirect to another host
            self.send_response(302)
            self.send_header("Location", "http://internal.invalid/file")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/hop/"):
            left = int(self.path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", "/file" if left <= 1 else f"/hop/{left - 1}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"", length=True)

    def _send(self, code: int, body: bytes, length: bool) -> None:
        self.send_response(code)
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(context=None):
    """A local HTTP(S) server in a thread; yields its port."""
    Files.hits = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_base():
    """A local HTTP server; yields its base URL."""
    with serving() as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def s3(s3_server):
    """moto's S3 server holding 'docs/report.pdf' in bucket 'mail'."""
    s3_server.put("mail", "docs/report.pdf", PAYLOAD[::-1])
    return s3_server


def fetch(config, **spec):
    return Fetcher(config).fetch(Attachment.model_validate({"filename": "f.bin", **spec}))


def test_base64(config):
    assert fetch(config, content=base64.b64encode(PAYLOAD).decode()).data == PAYLOAD


def test_url_fetched_when_private_addresses_are_allowed(make_config, http_base):
    config = make_config(allow_private_attachment_urls=True)
    assert fetch(config, url=f"{http_base}/file").data == PAYLOAD
    assert fetch(config, url=f"{http_base}/hop/{MAX_REDIRECTS}").data == PAYLOAD


def test_loopback_url_refused_by_default(config, http_base):
    with pytest.raises(AttachmentError, match="non-public address 127.0.0.1") as caught:
        fetch(config, url=f"{http_base}/file")
    assert caught.value.final and Files.hits == {}


@pytest.mark.parametrize(
    "addresses", [["10.1.2.3"], ["169.254.169.254"], ["93.184.216.34", "192.168.0.1"], ["::1"]]
)
def test_every_resolved_address_is_checked(config, addresses):
    fetcher = Fetcher(config, resolve=lambda host, port: addresses)
    spec = Attachment(filename="f", url="http://files.example.com/x")
    with pytest.raises(AttachmentError, match="non-public"):
        fetcher.fetch(spec)


def pinned_fetcher(config, **kwargs) -> Fetcher:
    """A fetcher that resolves every name to 127.0.0.1 and counts it as public."""
    return Fetcher(config, resolve=lambda host, port: ["127.0.0.1"],
                   address_allowed=lambda address: True, **kwargs)  # fmt: skip


def test_connection_goes_to_the_checked_address(config, http_base):
    port = http_base.rsplit(":", 1)[1]
    spec = Attachment(filename="f", url=f"http://user:secret@files.invalid:{port}/hop/2")
    assert pinned_fetcher(config).fetch(spec).data == PAYLOAD  # .invalid never resolves
    assert Files.hits == {"/hop/2": 1, "/hop/1": 1, "/file": 1}


def test_every_redirect_target_is_checked(config, http_base):
    port = http_base.rsplit(":", 1)[1]
    addresses = {"files.invalid": ["127.0.0.1"], "internal.invalid": ["10.0.0.5"]}
    fetcher = Fetcher(config, resolve=lambda host, port: addresses[host],
                      address_allowed=lambda address: address == "127.0.0.1")  # fmt: skip
    spec = Attachment(filename="f", url=f"http://files.invalid:{port}/away")
    with pytest.raises(AttachmentError, match="internal.invalid resolves to non-public"):
        fetcher.fetch(spec)
    assert Files.hits == {"/away": 1}


def test_tls_to_a_pinned_address_checks_the_name(config, tls_cert):
    import requests

    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment wins over verify
    session.verify = str(tls_cert.cert_path)
    with serving(tls_cert.server_context()) as port:
        spec = Attachment(filename="f", url=f"https://localhost:{port}/file")
        assert pinned_fetcher(config, session=session).fetch(spec).data == PAYLOAD


def test_errors_never_show_credentials_or_query(config):
    spec = Attachment(filename="f", url="http://user:secret@10.0.0.1/x?token=abc")
    with pytest.raises(AttachmentError) as caught:
        Fetcher(config).fetch(spec)
    assert "secret" not in str(caught.value) and "token" not in str(caught.value)


def test_too_many_redirects(make_config, http_base):
    config = make_config(allow_private_attachment_urls=True)
    with pytest.raises(AttachmentError, match="redirects") as caught:
        fetch(config, url=f"{http_base}/hop/{MAX_REDIRECTS + 1}")
    assert caught.value.final


@pytest.mark.parametrize("path", ["/file", "/big"])  # declared length, and streamed
def test_size_cap(make_config, http_base, path):
    config = make_config(allow_private_attachment_urls=True, attachment_max_bytes=4096)
    with pytest.raises(AttachmentError, match="larger than 4096 bytes"):
        fetch(config, url=f"{http_base}{path}")


def test_server_errors_are_retried_client_errors_are_not(make_config, http_base):
    config = make_config(allow_private_attachment_urls=True)
    with pytest.raises(AttachmentError, match="HTTP 503") as caught:
        fetch(config, url=f"{http_base}/status/503")
    assert caught.value.transient and Files.hits["/status/503"] == 3
    with pytest.raises(AttachmentError, match="HTTP 404") as caught:
        fetch(config, url=f"{http_base}/status/404")
    assert not caught.value.transient and Files.hits["/status/404"] == 1


def test_s3_object(make_config, s3):
    config = make_config(**s3.settings())
    assert fetch(config, s3={"bucket": "mail", "key": "docs/report.pdf"}).data == PAYLOAD[::-1]
    with pytest.raises(AttachmentError, match="NoSuchKey") as caught:
        fetch(config, s3={"bucket": "mail", "key": "missing"})
    assert not caught.value.transient


def test_message_with_all_three_sources_arrives_intact(
    conn, make_config, smtp_server, http_base, s3
):
    config = make_config(**s3.settings(), allow_private_attachment_urls=True)
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    files = [
        {"filename": "inline.bin", "content": base64.b64encode(b"\x00inline\xff").decode()},
        {"filename": "web.dat", "url": f"{http_base}/file", "mime_type": "application/x-web"},
        {"filename": "report.pdf", "s3": {"bucket": "mail", "key": "docs/report.pdf"}},
    ]
    enqueue(conn, config, message("m1", "acct", attachments=files))
    make_dispatcher(conn, config).run_once(T0)
    got = {p.get_filename(): (p.get_content_type(), p.get_payload(decode=True))
           for p in peer.received[0].message().iter_attachments()}  # fmt: skip
    assert got == {
        "inline.bin": ("application/octet-stream", b"\x00inline\xff"),
        "web.dat": ("application/x-web", PAYLOAD),
        "report.pdf": ("application/pdf", PAYLOAD[::-1]),
    }


def test_missing_attachment_means_no_send_and_a_retry(conn, make_config, smtp_server, http_base):
    config = make_config(allow_private_attachment_urls=True, max_retries=1)
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    gone = [{"filename": "x", "url": f"{http_base}/gone"}]
    enqueue(conn, config, message("m1", "acct", attachments=gone))
    dispatcher = make_dispatcher(conn, config)
    dispatcher.run_once(T0)
    assert peer.handler.attempted == [] and row(conn, "m1")["error_ts"] is None
    assert "HTTP 404" in row(conn, "m1")["error"]
    dispatcher.run_once(row(conn, "m1")["ready_at"])
    failed = row(conn, "m1")
    assert failed["error_ts"] is not None and "gave up after 2 attempts" in failed["error"]
    assert [a["outcome"] for a in attempts(conn, "m1")] == ["temporary", "temporary"]


def test_refused_url_fails_at_once(conn, config, smtp_server, http_base):
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    loopback = [{"filename": "x", "url": f"{http_base}/file"}]
    enqueue(conn, config, message("m1", "acct", attachments=loopback))
    make_dispatcher(conn, config).run_once(T0)
    failed = row(conn, "m1")
    assert failed["error_ts"] == int(T0) and "allow_private_attachment_urls" in failed["error"]
    assert peer.handler.attempted == []


# -- slow and hostile sources -------------------------------------------------------------------
@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b:1::a00:1",  # local-use NAT64 (RFC 8215)
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of the metadata endpoint 169.254.169.254
        "::ffff:10.0.0.1",  # IPv4-mapped
        "::a9fe:a9fe",  # IPv4-compatible 169.254.169.254
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1
    ],
)
def test_ipv6_forms_of_private_ipv4_addresses_are_refused(config, address):
    fetcher = Fetcher(config, resolve=lambda host, port: [address])
    with pytest.raises(AttachmentError, match="non-public") as caught:
        fetcher.fetch(Attachment(filename="f", url="http://files.example.com/x"))
    assert caught.value.final


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1", "8.8.8.8"])
def test_public_addresses_in_any_form_pass_the_check(address):
    assert _is_public(address)  # 8.8.8.8 as itself, through NAT64 and through 6to4


def test_a_dripping_source_is_cut_at_the_fetch_deadline(make_config, hostile):
    drip = hostile(DrippingSource, interval=0.2)
    config = make_config(allow_private_attachment_urls=True, attachment_timeout_seconds=1)
    with pytest.raises(AttachmentError, match="not fetched within 1 s") as caught:
        fetch(config, url=drip.url)
    assert not caught.value.final  # temporary: the message is retried later
    assert drip.requests == 1  # the retry inside the attempt does not start the drip again
    procs.wait_for(lambda: drip.cut == 1, message="the source saw the connection cut")


def test_a_dripping_s3_endpoint_is_cut_at_the_fetch_deadline(make_config, hostile):
    drip = hostile(DrippingSource, interval=0.2, length=40)  # 8 s, were it read to its end
    config = make_config(
        s3_endpoint_url=f"http://127.0.0.1:{drip.port}",
        s3_region="us-east-1",
        s3_access_key_id="key",
        s3_secret_access_key="secret",
        s3_allowed_buckets=("mail",),
        attachment_timeout_seconds=1,
    )
    with pytest.raises(AttachmentError, match="not fetched within 1 s") as caught:
        fetch(config, s3={"bucket": "mail", "key": "slow.bin"})
    assert not caught.value.final  # temporary: the message is retried later
    procs.wait_for(lambda: drip.cut == 1, message="the endpoint saw the connection cut")


def test_a_dripping_attachment_defers_its_message(conn, make_config, smtp_server, hostile):
    drip = hostile(DrippingSource, interval=0.2)
    config = make_config(allow_private_attachment_urls=True, attachment_timeout_seconds=1)
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    slow = [{"filename": "slow.bin", "url": drip.url}]
    enqueue(conn, config, message("slow", "acct", attachments=slow), message("next", "acct"))
    make_dispatcher(conn, config).run_once(T0)
    assert peer.subjects() == ["next"]
    deferred = row(conn, "slow")
    assert deferred["error_ts"] is None and deferred["ready_at"] >= T0 + 54  # retry delay
    assert "not fetched within 1 s" in deferred["error"]


def stored_s3_message(conn, bucket: str) -> None:
    """An S3 attachment stored as if enqueued before the configuration changed."""
    s3 = {"bucket": bucket, "key": "docs/report.pdf"}
    item = message("m1", "acct", attachments=[{"filename": "r.pdf", "s3": s3}])
    store.messages.enqueue(
        conn,
        "default",
        [store.messages.NewMessage("m1", "acct", 2, item, None, "<m1@x.example>")],
        T0,
    )


@pytest.fixture
def metadata(hostile, monkeypatch):
    """The instance-metadata stand-in, where botocore would look for credentials."""
    stand_in = hostile(MetadataStandIn)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_EC2_METADATA_DISABLED"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", stand_in.url)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    return stand_in


def test_s3_without_keys_never_asks_the_metadata_endpoint(conn, config, smtp_server, metadata):
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    stored_s3_message(conn, "mail")
    make_dispatcher(conn, config).run_once(T0)
    failed = row(conn, "m1")
    assert failed["error_ts"] == int(T0) and "S3 attachments are not enabled" in failed["error"]
    assert metadata.requests == [] and peer.handler.attempted == []


def test_s3_outside_the_allowed_buckets_is_refused(conn, make_config, smtp_server, s3, metadata):
    config = make_config(**s3.settings(buckets=("invoices",)))
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    stored_s3_message(conn, "mail")
    make_dispatcher(conn, config).run_once(T0)
    assert "not in s3_allowed_buckets" in row(conn, "m1")["error"]
    allowed = make_config(**s3.settings())
    assert (
        Fetcher(allowed)
        .fetch(Attachment(filename="f", s3={"bucket": "mail", "key": "docs/report.pdf"}))
        .data
        == PAYLOAD[::-1]
    )
    assert metadata.requests == []  # explicit keys and region: nothing looked up
