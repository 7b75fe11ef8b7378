"""An optional MLflow webhook receiver that wakes the watcher as soon as something happens.

Registered-model and experiment tags raise no webhook (MLflow 3.17 only sends registry events:
``registered_model.created``, ``model_version.created``, ``model_version_tag.set/deleted``,
``model_version_alias.created/deleted``), so polling stays the source of truth; a verified
delivery only makes the next round start now instead of after ``--poll`` seconds.

Deliveries are verified exactly as MLflow signs them (``mlflow/webhooks/delivery.py``):
``X-MLflow-Signature: v1,<base64(HMAC-SHA256(secret, f"{delivery_id}.{timestamp}.{body}"))>``
with ``X-MLflow-Delivery-Id`` and ``X-MLflow-Timestamp``. A bad or missing signature, or a
timestamp more than ``tolerance`` seconds away, gets 401; a delivery id already accepted within
that window gets 409 (a replay: MLflow's own retries only follow 429/5xx, so it never resends an
accepted delivery).

The port is open to whoever can reach the pod, so everything before the signature check is
bounded, and nothing an unauthenticated client sends can make it hold memory or threads:

- It runs on uvicorn (h11) + Starlette, the ASGI stack MLflow already installs: one event-loop
  thread for all connections, whatever their number (the hand-written ``http.server`` before it
  used one thread per connection and no timeout).
- Bodies: a ``Content-Length`` above ``max_body`` gets 413 before a byte of the body is read; a
  malformed or negative one is refused by h11 with 400; a chunked body is counted while it streams
  and refused at ``max_body``. Every refusal that leaves body unread closes the connection.
- Time: the request head and the body must each arrive within ``request_timeout`` seconds (408 or
  a closed connection; uvicorn itself only times out the idle gap after a response, and any byte
  resets that, so a client sending nothing or a header a byte at a time would hold a connection
  forever), and an idle keep-alive connection is closed after ``keep_alive`` seconds.
- At most ``max_connections`` connections are served at once (uvicorn ``limit_concurrency``: a
  request beyond it gets 503, which MLflow retries); a request head is at most 16 KiB (h11).
- Replay memory: the ids of accepted deliveries, each forgotten once its timestamp leaves the
  freshness window (a replay after that fails the timestamp check instead), at most
  ``max_remembered`` of them (beyond that, 503: nothing is forgotten early).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import heapq
import hmac
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
MAX_BODY = 1 << 20
MAX_HEAD = 16 * 1024  # request line + headers (h11's default, set explicitly)

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_DELIVERY_ID = re.compile(r"[\x21-\x7e]{1,128}")  # MLflow sends a UUID; printable ASCII, bounded


def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    """The ``X-MLflow-Signature`` MLflow sends for this delivery."""
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: Any, body: bytes, now: float | None = None, tolerance: float = 300.0) -> str | None:
    """None if the delivery is authentic and fresh, else why not (replays are the receiver's job:
    this function has no memory)."""
    sig = headers.get(SIGNATURE_HEADER) or ""
    delivery = headers.get(DELIVERY_ID_HEADER) or ""
    stamp = headers.get(TIMESTAMP_HEADER) or ""
    if not (sig and delivery and stamp):
        return "missing signature headers"
    if not _DELIVERY_ID.fullmatch(delivery):
        return "bad delivery id"
    if not _TIMESTAMP.fullmatch(stamp):
        return "bad timestamp"
    age = abs((time.time() if now is None else now) - int(stamp))
    if age > tolerance:
        return f"timestamp {age:.0f} s away from now (more than {tolerance:.0f} s)"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "body is not UTF-8"
    expected = sign(secret, delivery, stamp, text)
    if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "surrogateescape")):
        return "signature mismatch"
    return None


def _bounded_h11_protocol(head_timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request head (see the module docstring)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class BoundedH11Protocol(H11Protocol):
        _head_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # a whole request head arrived (or an error)
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request's head has the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_deadline = self.loop.call_later(head_timeout, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _head_timed_out(self) -> None:
            self._head_deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return BoundedH11Protocol


class WebhookReceiver:
    """``POST`` (any path) receiver on ``host:port``; calls ``on_event(payload)`` for verified, fresh,
    new deliveries whose body is a JSON object. ``on_event`` runs on the server's event loop: keep it
    quick (the watcher's only sets an ``Event``). Use as a context manager; ``port`` is known (and
    the socket bound) as soon as the object exists. ``accepted`` / ``refused`` count deliveries."""

    def __init__(
        self,
        secret: str,
        on_event: Callable[[dict[str, Any]], None],
        port: int = 0,
        host: str = "0.0.0.0",
        *,
        max_body: int = MAX_BODY,
        tolerance: float = 300.0,
        request_timeout: float = 10.0,
        keep_alive: int = 5,
        max_connections: int = 64,
        max_remembered: int = 10_000,
    ) -> None:
        if not secret:
            raise ValueError("a webhook secret is required (QUICKTUNE_WEBHOOK_SECRET)")
        import uvicorn

        self.secret = secret
        self.on_event = on_event
        self.max_body = max_body
        self.tolerance = tolerance
        self.request_timeout = request_timeout
        self.max_remembered = max_remembered
        self.accepted = 0
        self.refused = 0
        self._seen: set[str] = set()
        self._expiry: list[tuple[int, str]] = []  # (timestamp, delivery id), a heap
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError:
            self._sock.close()
            raise
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            self._app(),
            http=_bounded_h11_protocol(request_timeout),
            loop="asyncio",
            lifespan="off",
            ws="none",
            interface="asgi3",
            proxy_headers=False,
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
            limit_concurrency=max_connections,
            timeout_keep_alive=keep_alive,
            timeout_graceful_shutdown=2,
            h11_max_incomplete_event_size=MAX_HEAD,
            backlog=128,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="quicktune-webhook", daemon=True)
        self._error: BaseException | None = None

    # --- the ASGI app -----------------------------------------------------------------------
    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.routing import Route

        return Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])

    @staticmethod
    def _answer(code: int, text: str, close: bool = False) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"result": text}, status_code=code, headers={"Connection": "close"} if close else None)

    async def _read_body(self, request: Any) -> bytes | Any:
        """The body, or the response refusing it (413 / 408 / 400) before more than ``max_body``
        bytes were taken in."""
        from starlette.requests import ClientDisconnect

        length = request.headers.get("content-length")
        if length is not None:
            # h11 refused a malformed or negative one already (400); this is the same rule, kept
            # here so the cap does not depend on the parser in front of it
            if not length.isascii() or not length.isdigit():
                return self._answer(400, "bad Content-Length", close=True)
            if int(length) > self.max_body:
                return self._answer(413, f"body larger than {self.max_body} bytes", close=True)
        body = bytearray()
        try:
            async with asyncio.timeout(self.request_timeout):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > self.max_body:
                        return self._answer(413, f"body larger than {self.max_body} bytes", close=True)
        except TimeoutError:
            return self._answer(408, f"body not received within {self.request_timeout:g} s", close=True)
        except ClientDisconnect:
            return self._answer(400, "client went away", close=True)
        return bytes(body)

    def _remember(self, delivery: str, stamp: int) -> str | None:
        """Record an authentic delivery; why not if it is a replay (or the memory is full). Runs on
        the event loop with no ``await`` inside, so two copies racing cannot both pass."""
        horizon = time.time() - self.tolerance
        while self._expiry and self._expiry[0][0] < horizon:
            self._seen.discard(heapq.heappop(self._expiry)[1])
        if delivery in self._seen:
            return "delivery already received"
        if len(self._seen) >= self.max_remembered:
            return "too many deliveries in the freshness window"
        self._seen.add(delivery)
        heapq.heappush(self._expiry, (stamp, delivery))
        return None

    async def _handle(self, request: Any) -> Any:
        body = await self._read_body(request)
        if not isinstance(body, bytes):
            self.refused += 1
            return body
        why = verify(self.secret, request.headers, body, tolerance=self.tolerance)
        if why is not None:
            self.refused += 1
            log.warning("webhook refused: %s", why)
            return self._answer(401, why)
        delivery = request.headers[DELIVERY_ID_HEADER]
        why = self._remember(delivery, int(request.headers[TIMESTAMP_HEADER]))
        if why is not None:
            self.refused += 1
            log.warning("webhook refused: %s (%s)", why, delivery)
            return self._answer(409 if why.startswith("delivery") else 503, why)
        try:
            payload = json.loads(body)  # every MLflow delivery is a JSON object; an empty body is not one
        except (ValueError, RecursionError):
            payload = None
        if not isinstance(payload, dict):
            self.refused += 1
            return self._answer(400, "not a JSON object")
        self.accepted += 1
        try:
            self.on_event(payload)
        except Exception:  # noqa: BLE001 - the delivery was fine; the watcher polls anyway
            log.exception("webhook: on_event failed")
        return self._answer(200, "ok")

    # --- running ----------------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # noqa: BLE001 - reported by __enter__ / __exit__
            self._error = exc

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"the webhook receiver did not start: {self._error!r}")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        """Stop accepting, give open requests ~2 s, then stop the loop and join its thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        if self._thread.is_alive():  # a connection that would not finish: force the loop out
            self._server.force_exit = True
            self._thread.join(timeout=5)
        self._sock.close()
