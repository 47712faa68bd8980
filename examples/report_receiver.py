"""A delivery-report endpoint that prints what it receives: a stand-in for an application.

Run: ``python examples/report_receiver.py 9001`` (the standard library only), then point a
tenant's ``client_sync_url`` (or ``[client] client_sync_url``) at
``http://127.0.0.1:9001/sync``.  Each report item is printed as one JSON line after the
port, and every request is answered ``200 {"ok": true, "processed": N}``, which marks its
items reported.  A real endpoint also checks the bearer token or basic auth it was given,
and the signature (docs/reporting.md).
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Reports(BaseHTTPRequestHandler):
    """Prints each item of a POSTed report; answers 200."""

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            report = json.loads(body or b"{}")
        except ValueError:
            self.send_error(400, "not JSON")
            return
        items = report.get("delivery_report") or report.get("reports") or []
        for item in items:
            print(self.server.server_port, json.dumps(item, sort_keys=True), flush=True)
        answer = json.dumps({"ok": True, "processed": len(items)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format, *args):  # noqa: A002 - only the items are printed
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Reports).serve_forever()
