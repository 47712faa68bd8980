"""A small client for async-mail-service: copy this file into your application.

    client = MailClient("http://127.0.0.1:8000", token=None)
    client.send("invoice-42-mail", to="ann@example.org", subject="Your invoice",
                body="...", sender="Shop <shop@example.com>", account_id="main")
    client.message("invoice-42-mail")["status"]      # queued, sending, sent, error

Every message carries an id you choose (derive it from your own record: "invoice-42-mail").
That makes retrying safe: when an answer is lost, the same request again either replaces the
stored copy (not sent yet) or is refused as "in flight" / "already sent", which after a retry
means the first try got through.  Requests are retried on 503 (database busy, Retry-After
honoured), on connection errors (the service restarting) and on timeouts; other answers are
final.
Needs only requests (pip install requests).
"""

from __future__ import annotations

import time
import uuid

import requests

RETRIES = 5  # attempts after the first: 0.5 + 1 + 2 + 4 + 8 s, about a service restart
BACKOFF = 0.5  # seconds before the first retry; doubles each time
TAKEN = {"already sent", "in flight"}  # a retried id refused for these was stored the 1st time


class MailError(Exception):
    """The service refused the request (its ``error`` sentence is the message)."""

    def __init__(self, status: int, answer: dict):
        super().__init__(f"HTTP {status}: {answer.get('error', answer)}")
        self.status, self.answer = status, answer


class MailClient:
    """The REST API of async-mail-service, with retries."""

    def __init__(self, url: str, token: str | None = None, retries: int = RETRIES):
        self.url, self.retries, self.timeout = url.rstrip("/"), retries, 10.0
        self.session = requests.Session()
        if token:
            self.session.headers["X-API-Token"] = token

    def _call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict, int]:
        """(HTTP status, answer, retries used); raises after the last retry."""
        for attempt in range(self.retries + 1):
            last, wait = attempt == self.retries, BACKOFF * 2**attempt
            try:  # json= sends Content-Type: application/json, which the service expects
                answer = self.session.request(
                    method, self.url + path, json=body, timeout=self.timeout
                )
            except (requests.ConnectionError, requests.Timeout):
                if last:
                    raise
                time.sleep(wait)
                continue
            if answer.status_code != 503 or last:
                return answer.status_code, answer.json(), attempt
            time.sleep(max(wait, float(answer.headers.get("Retry-After", 0))))
        raise ValueError("retries must be >= 0")

    def _ok(self, method: str, path: str, body: dict | None = None) -> dict:
        status, answer, _ = self._call(method, path, body)
        if not answer.get("ok"):
            raise MailError(status, answer)
        return answer

    def add_messages(self, messages: list[dict]) -> list[dict]:
        """Queue messages; returns the rejected ones ([] when all were queued)."""
        body = {"messages": messages}
        status, answer, retried = self._call("POST", "/commands/add-messages", body)
        rejected = answer.get("rejected")
        if rejected is None:  # the request as a whole was refused
            raise MailError(status, answer)
        return [r for r in rejected if not (retried and r["reason"] in TAKEN)]

    def send(self, message_id: str | None = None, **fields) -> str:
        """Queue one message (``sender`` is the ``from`` field); returns its id."""
        message_id = message_id or f"mail-{uuid.uuid4()}"
        item = {"id": message_id, "from": fields.pop("sender"), **fields}
        rejected = self.add_messages([item])
        if rejected:
            raise MailError(400, {"error": rejected[0]["reason"], "rejected": rejected})
        return message_id

    def message(self, message_id: str) -> dict:
        """The stored message: status, attempts, attempt_log, message_id_header."""
        return self._ok("GET", "/messages/" + requests.utils.quote(message_id, safe=""))

    def wait_until_done(self, message_id: str, timeout: float = 60.0) -> dict:
        """Poll until the message is sent or failed for good (tests, scripts)."""
        deadline = time.monotonic() + timeout
        while (record := self.message(message_id))["status"] not in ("sent", "error"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{message_id} still {record['status']}")
            time.sleep(0.2)
        return record

    def save_account(self, **account) -> dict:
        """Create or replace an SMTP account (id, host, port, user, password, limits...)."""
        return self._ok("POST", "/account", account)["account"]

    def status(self) -> dict:
        """Counts per status, the scheduler switch, process heartbeats."""
        return self._ok("GET", "/status")
