"""A local stand-in for the Stripe API, for the official ``stripe`` library (its api_base).

It answers ``POST /v1/checkout/sessions`` with a Checkout Session whose ``url`` points back at
itself, and records every request (path, headers, form fields) for the test to inspect.
``signature_header`` signs a webhook payload with Stripe's documented scheme, built here by
hand (not with the library) so the test checks the library against the scheme:
``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<payload>")>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def signature_header(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256)
    return f"t={ts},v1={mac.hexdigest()}"


def checkout_completed(event_id: str, session_id: str, account_id: str, amount: int,
                       *, paid: bool = True, metadata_amount: str | None = None,
                       event_type: str = "checkout.session.completed") -> bytes:
    """A webhook payload shaped like Stripe's for a Checkout Session."""
    return json.dumps({
        "id": event_id,
        "object": "event",
        "api_version": "2025-01-27.acacia",
        "created": int(time.time()),
        "livemode": False,
        "type": event_type,
        "data": {"object": {
            "id": session_id,
            "object": "checkout.session",
            "mode": "payment",
            "amount_total": amount,
            "currency": "usd",
            "client_reference_id": account_id,
            "payment_status": "paid" if paid else "unpaid",
            "status": "complete",
            "metadata": {"account_id": account_id,
                         "amount": str(amount) if metadata_amount is None else metadata_amount},
        }},
    }).encode()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]


@dataclass
class StripeStandIn:
    server: ThreadingHTTPServer
    requests: list[Seen] = field(default_factory=list)
    sessions: int = 0

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start() -> StripeStandIn:
    standin: StripeStandIn

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, doc: dict[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Request-Id", "req_standin")
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            form = {k: v[-1] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
            standin.requests.append(Seen("POST", self.path, dict(self.headers.items()), form))
            if self.path != "/v1/checkout/sessions":
                self._reply(404, {"error": {"type": "invalid_request_error",
                                            "message": f"no stand-in for {self.path}"}})
                return
            standin.sessions += 1
            sid = f"cs_test_standin_{standin.sessions}"
            self._reply(200, {
                "id": sid, "object": "checkout.session", "mode": form.get("mode"),
                "url": f"{standin.url}/pay/{sid}", "payment_status": "unpaid",
                "amount_total": int(form.get("line_items[0][price_data][unit_amount]", 0)),
                "metadata": {k[len("metadata["):-1]: v for k, v in form.items()
                             if k.startswith("metadata[")},
            })

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    standin = StripeStandIn(server)
    threading.Thread(target=server.serve_forever, name="stripe-standin", daemon=True).start()
    return standin
