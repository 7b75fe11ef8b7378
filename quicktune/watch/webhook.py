"""An optional MLflow webhook receiver that wakes the watcher as soon as something happens.

Registered-model and experiment tags raise no webhook (MLflow 3.17 only sends registry events:
``registered_model.created``, ``model_version.created``, ``model_version_tag.set/deleted``,
``model_version_alias.created/deleted``), so polling stays the source of truth; a verified
delivery only makes the next round start now instead of after ``--poll`` seconds.

Deliveries are verified exactly as MLflow signs them (``mlflow/webhooks/delivery.py``):
``X-MLflow-Signature: v1,<base64(HMAC-SHA256(secret, f"{delivery_id}.{timestamp}.{body}"))>``
with ``X-MLflow-Delivery-Id`` and ``X-MLflow-Timestamp``; a bad or missing signature, or a
timestamp older than ``tolerance`` seconds (a replay), gets 401 and is ignored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
MAX_BODY = 1 << 20


def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: Any, body: bytes, now: float | None = None, tolerance: float = 300.0) -> str | None:
    """None if the delivery is authentic and fresh, else why not."""
    sig = headers.get(SIGNATURE_HEADER) or ""
    delivery = headers.get(DELIVERY_ID_HEADER) or ""
    stamp = headers.get(TIMESTAMP_HEADER) or ""
    if not (sig and delivery and stamp):
        return "missing signature headers"
    try:
        age = abs((time.time() if now is None else now) - int(stamp))
    except ValueError:
        return "bad timestamp"
    if age > tolerance:
        return f"timestamp {age:.0f} s away from now (more than {tolerance:.0f} s)"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "body is not UTF-8"
    expected = sign(secret, delivery, stamp, text)
    if not hmac.compare_digest(expected.encode(), sig.encode()):
        return "signature mismatch"
    return None


class WebhookReceiver:
    """``POST /`` (any path) receiver on ``host:port``; calls ``on_event(payload)`` for verified deliveries."""

    def __init__(self, secret: str, on_event: Callable[[dict[str, Any]], None], port: int = 0,
                 host: str = "0.0.0.0") -> None:
        if not secret:
            raise ValueError("a webhook secret is required (QUICKTUNE_WEBHOOK_SECRET)")
        receiver = self
        self.secret = secret
        self.on_event = on_event
        self.accepted = 0
        self.refused = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    return self._answer(413, "too large")
                body = self.rfile.read(length)
                why = verify(receiver.secret, self.headers, body)
                if why is not None:
                    receiver.refused += 1
                    log.warning("webhook refused: %s", why)
                    return self._answer(401, why)
                try:
                    payload = json.loads(body or b"{}")
                except ValueError:
                    return self._answer(400, "not JSON")
                receiver.accepted += 1
                receiver.on_event(payload)
                return self._answer(200, "ok")

            def _answer(self, code: int, text: str) -> None:
                data = json.dumps({"result": text}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("webhook: " + fmt, *args)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="quicktune-webhook", daemon=True)

    def __enter__(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
