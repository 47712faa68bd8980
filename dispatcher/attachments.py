"""Fetching attachments at send time: inline base64, HTTP(S) URLs and S3 objects.

URL fetches are guarded against SSRF: the host is resolved and every address checked
(private, loopback, link-local, reserved, multicast and unspecified ranges are refused unless
``allow_private_attachment_urls``; an IPv6 address that embeds an IPv4 one, as NAT64, 6to4,
Teredo, IPv4-mapped and IPv4-compatible addresses do, is judged by the embedded address
too), and the connection goes to the checked address (the name travels in the Host header
and, for TLS, in SNI and the certificate check), so a second DNS answer cannot steer it
elsewhere.  Redirects are followed by hand, at most MAX_REDIRECTS, each target checked the
same way; the body is streamed under ``attachment_max_bytes``.

``attachment_timeout_seconds`` is the deadline of one attachment's whole fetch (connecting,
redirects, every byte, the retries), and TOTAL_FACTOR times it the deadline of all of a
message's attachments: the guard cuts the connection of a source that drips its bytes.
Transient failures (connection errors, 5xx, S3 throttling) are retried inside the attempt
while the deadline allows; the rest fail at once.  Either way the caller sends nothing
without every attachment.

S3 objects are fetched only with explicitly configured keys and from ``s3_allowed_buckets``
(``Config.s3_refusal``): boto3 never falls back to its default credential chain (the
environment, files, the instance metadata endpoint).
"""

from __future__ import annotations

import base64
import ipaddress
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from tenacity import retry, retry_if_exception, stop_after_attempt, stop_any, wait_exponential

from common.config import Config
from common.guard import Guard, tracking_pool
from common.logs import redact_url
from dispatcher.mime import Part
from dispatcher.payload import Attachment

if TYPE_CHECKING:
    import requests

MAX_REDIRECTS = 3  # enough for http->https and a CDN hop; more smells of a loop or a trick
FETCH_TRIES = 3  # tries per attachment within one delivery attempt
TOTAL_FACTOR = 2  # all of a message's attachments: twice the deadline of one, not n times
DEFAULT_S3_REGION = "us-east-1"  # explicit: boto3 must not look a region up anywhere
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are IPv4
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: local use, never public
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d
CHUNK = 64 * 1024
S3_RETRYABLE = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
}


class AttachmentError(Exception):
    """An attachment could not be fetched; ``transient`` ones were worth retrying.

    ``final`` marks a refusal by policy (private address, size cap): retrying the message
    later cannot help, so it fails at once.
    """

    def __init__(self, reason: str, transient: bool = False, final: bool = False):
        super().__init__(reason)
        self.transient = transient
        self.final = final


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, AttachmentError) and exc.transient


class Fetcher:
    """Turns a message's attachment specs into Parts, or raises AttachmentError."""

    def __init__(
        self,
        config: Config,
        session: requests.Session | None = None,
        resolve: Callable[[str, int], list[str]] | None = None,
        address_allowed: Callable[[str], bool] | None = None,
        guard: Guard | None = None,
    ):
        self.config = config
        self.session = session  # pinned on the first URL attachment, see _get_url
        self.pinned = False
        self.resolve = resolve or _resolve
        self.address_allowed = address_allowed or _is_public
        self.guard = guard or Guard()
        self._s3 = None
        self._retry = retry(
            retry=retry_if_exception(_is_transient),
            stop=stop_any(stop_after_attempt(FETCH_TRIES), self._out_of_time),
            wait=wait_exponential(multiplier=0.2, max=2),
            reraise=True,
        )

    def fetch_all(self, attachments: list[Attachment]) -> list[Part]:
        """Every attachment's bytes, in order, within TOTAL_FACTOR deadlines of one."""
        if all(a.content is not None for a in attachments):  # nothing to wait for
            return [self.fetch(a) for a in attachments]
        total = TOTAL_FACTOR * self.config.attachment_timeout_seconds
        try:
            with self.guard.within(total, f"attachments not fetched within {total:g} s"):
                return [self.fetch(a) for a in attachments]
        finally:
            if self.pinned:  # kept-alive connections were tracked by this attempt only
                self.session.close()

    def fetch(self, att: Attachment) -> Part:
        """One attachment's bytes, within ``attachment_timeout_seconds``."""
        if att.content is not None:
            data = base64.b64decode("".join(att.content.split()))
            return Part(att.filename, data, att.mime_type, att.content_id)
        seconds = self.config.attachment_timeout_seconds
        where = redact_url(att.url) if att.url is not None else f"s3://{att.s3.bucket}/{att.s3.key}"
        try:
            with self.guard.within(seconds, f"{where}: not fetched within {seconds:g} s"):
                if att.url is not None:
                    data = self._retry(self._get_url)(att.url)
                else:
                    data = self._retry(self._get_s3)(att.s3.bucket, att.s3.key)
        except AttachmentError:
            if self.guard.cut is None:
                raise
            raise AttachmentError(self.guard.cut) from None  # temporary: retried later
        if self.guard.cut is not None:
            raise AttachmentError(self.guard.cut)
        return Part(att.filename, data, att.mime_type, att.content_id)

    def _out_of_time(self, retry_state) -> bool:
        """tenacity stop: the deadline cut the fetch, or too little of it is left."""
        remaining = self.guard.remaining()
        return self.guard.cut is not None or (remaining is not None and remaining <= 0)

    def _timeout(self) -> float:
        """Per connect and per read: the configured timeout, or what the deadline leaves."""
        remaining = self.guard.remaining()
        timeout = self.config.attachment_timeout_seconds
        return timeout if remaining is None else max(0.001, min(timeout, remaining))

    # -- HTTP(S) ------------------------------------------------------------------------------
    def _get_url(self, url: str) -> bytes:
        # imported on the first URL attachment, not at start: requests and urllib3 cost each
        # dispatcher ~5 MiB of resident memory, and most messages carry no URL
        from requests import RequestException

        from dispatcher.pinned import pinned_session

        if not self.pinned:
            self.session, self.pinned = pinned_session(self.session, self.guard.track), True
        for _ in range(MAX_REDIRECTS + 1):
            target, headers = self._check_target(url)
            try:
                with self.session.get(
                    target,
                    headers=headers,
                    stream=True,
                    allow_redirects=False,
                    timeout=self._timeout(),
                ) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers["Location"])
                        continue
                    return self._body(url, response)
            except RequestException as exc:  # connecting, or the body broke off
                raise AttachmentError(
                    f"{redact_url(url)}: {type(exc).__name__}", transient=True
                ) from None
        raise AttachmentError(f"{redact_url(url)}: more than {MAX_REDIRECTS} redirects", final=True)

    def _body(self, url: str, response: requests.Response) -> bytes:
        if response.status_code >= 400:
            transient = response.status_code >= 500 or response.status_code == 429
            raise AttachmentError(
                f"{redact_url(url)}: HTTP {response.status_code}", transient=transient
            )
        limit = self.config.attachment_max_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise AttachmentError(f"{redact_url(url)}: larger than {limit} bytes", final=True)
        chunks, size = [], 0
        for chunk in response.iter_content(CHUNK):
            size += len(chunk)
            if size > limit:
                raise AttachmentError(f"{redact_url(url)}: larger than {limit} bytes", final=True)
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_target(self, url: str) -> tuple[str, dict]:
        """(URL to request, extra headers): the checked address pinned, unless private is ok."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AttachmentError(
                f"{redact_url(url)}: only http and https URLs are fetched", final=True
            )
        if self.config.allow_private_attachment_urls:
            return url, {}
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = self.resolve(parts.hostname, port)
        except OSError as exc:
            raise AttachmentError(
                f"{redact_url(url)}: cannot resolve host ({exc})", transient=True
            ) from None
        for address in addresses:
            if not self.address_allowed(address):
                raise AttachmentError(
                    f"{redact_url(url)}: refused, {parts.hostname} resolves to non-public address "
                    f"{address} (allow_private_attachment_urls is off)",
                    final=True,
                )
        if not addresses:
            raise AttachmentError(f"{redact_url(url)}: no address for host", transient=True)
        userinfo, _, host = parts.netloc.rpartition("@")
        literal = f"[{addresses[0]}]" if ":" in addresses[0] else addresses[0]
        pinned = f"{userinfo}@{literal}:{port}" if userinfo else f"{literal}:{port}"
        return parts._replace(netloc=pinned).geturl(), {"Host": host}

    # -- S3 -----------------------------------------------------------------------------------
    def _get_s3(self, bucket: str, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"s3://{bucket}/{key}"
        refusal = self.config.s3_refusal(bucket)
        if refusal is not None:  # stored before the configuration changed
            raise AttachmentError(f"{where}: {refusal}", final=True)
        limit = self.config.attachment_max_bytes
        try:
            obj = self._s3_client().get_object(Bucket=bucket, Key=key)
            if obj.get("ContentLength", 0) > limit:
                raise AttachmentError(f"{where}: larger than {limit} bytes", final=True)
            data = obj["Body"].read(limit + 1)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            raise AttachmentError(
                f"{where}: {code or exc}", transient=code in S3_RETRYABLE
            ) from None
        except BotoCoreError as exc:
            raise AttachmentError(f"{where}: {type(exc).__name__}", transient=True) from None
        if len(data) > limit:
            raise AttachmentError(f"{where}: larger than {limit} bytes", final=True)
        return data

    def _s3_client(self):
        if self._s3 is None:
            import boto3  # imported only when an S3 attachment is met: it costs ~100 ms
            from botocore.config import Config as BotoConfig

            timeout = self.config.attachment_timeout_seconds
            # every setting explicit (keys, region, endpoint): nothing is looked up in the
            # environment, in ~/.aws or at the instance metadata endpoint
            self._s3 = boto3.client(
                "s3",
                endpoint_url=self.config.s3_endpoint_url,
                region_name=self.config.s3_region or DEFAULT_S3_REGION,
                aws_access_key_id=self.config.s3_access_key_id,
                aws_secret_access_key=self.config.s3_secret_access_key,
                aws_session_token=None,
                config=BotoConfig(
                    connect_timeout=timeout,
                    read_timeout=timeout,
                    retries={"max_attempts": 1},
                    ignore_configured_endpoint_urls=True,
                ),
            )
            self._track_s3_connections()
        return self._s3

    def _track_s3_connections(self) -> None:
        """Hand every connection the S3 client lends to the guard, as the URL session does.

        botocore bounds each read only, so without this a dripping or mute endpoint would
        hold the fetch past its deadline.  botocore has no public hook for its pool classes:
        they are replaced in the mapping its pool managers share (a test fails if it moves).
        """
        pools = self._s3._endpoint.http_session._pool_classes_by_scheme
        for scheme, pool_class in pools.items():
            pools[scheme] = tracking_pool(pool_class, self.guard.track)


def _is_public(address: str) -> bool:
    """A globally routable address, and so is every IPv4 address it embeds."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if not ip.is_global:
        return False
    if ip.version == 4:
        return True
    if ip in NAT64_LOCAL:
        return False
    embedded = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
    if ip in NAT64 or ip in IPV4_COMPATIBLE:
        embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return all(v4.is_global for v4 in embedded if v4 is not None)


def _resolve(host: str, port: int) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
