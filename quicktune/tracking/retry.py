"""Retry transient infrastructure errors (MLflow or S3 unreachable) with exponential backoff.

Why here and not only in the clients: MLflow and boto3 retry single HTTP requests briefly, but a
search must ride out an outage of tens of seconds (a restarting server, a flapping S3 gateway)
and, when it cannot, stop with a message that says *which* service failed and for how long,
instead of a stack trace from deep inside a client.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT_WORDS = (
    "connection",
    "connect timeout",
    "timed out",
    "timeout",
    "max retries exceeded",
    "temporarily unavailable",
    "service unavailable",
    "bad gateway",
    "gateway timeout",
    "internal server error",
    "too many 500",
    "too many 502",
    "too many 503",
    "too many 504",
    "remote end closed",
    "broken pipe",
    "reset by peer",
    "endpointconnectionerror",
    "could not connect",
    "name or service not known",
    "database is locked",
    "slowdown",
    "503",
    "502",
    "504",
    "500 server error",
    "status code 500",
    "error code 50",
    "response code 50",
    "too many retries",
)


class InfrastructureError(RuntimeError):
    """A tracking or storage service stayed unreachable after all retries."""


_CLIENT_WRAPPERS = ("boto3", "s3transfer", "botocore", "mlflow")


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: network failures and 5xx answers, not bad requests.

    The chain of causes is read too: boto3's upload helpers (what MLflow's S3 artifact store calls)
    raise ``S3UploadFailedError`` while handling the ``ClientError`` that carries the HTTP status,
    so an S3 gateway answering 500 ``InternalError`` (its backend restarting) only shows as such in
    ``__context__``. The first exception in the chain whose kind tells its answer decides. An
    implicit ``__context__`` is followed only out of the client libraries' own wrappers: elsewhere
    an error raised while handling a network error (a ``ValueError`` for a bad answer, say) is an
    error of its own, not a retryable one.
    """
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and len(chain) < 6 and all(link is not seen for seen in chain):
        chain.append(link)
        wrapper = type(link).__module__.split(".")[0] in _CLIENT_WRAPPERS
        link = link.__cause__ or (link.__context__ if wrapper and not link.__suppress_context__ else None)
    for link in chain:
        verdict = _transient_by_kind(link)
        if verdict is not None:
            return verdict
    text = " ".join(f"{type(link).__name__}: {link}".lower() for link in chain)
    return any(w in text for w in _TRANSIENT_WORDS)


def _transient_by_kind(exc: BaseException) -> bool | None:
    """True/False where the exception's type and codes decide; None where only its text can tell."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        import requests  # type: ignore[import-untyped]  # no stubs in the venv (types-requests)

        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        from botocore import exceptions as bx

        if isinstance(
            exc, (bx.EndpointConnectionError, bx.ConnectionClosedError, bx.ReadTimeoutError, bx.ConnectTimeoutError)
        ):
            return True
        if isinstance(exc, bx.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            return status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout")
    except ImportError:  # pragma: no cover
        pass
    try:
        from mlflow.exceptions import MlflowException

        if isinstance(exc, MlflowException):
            code = getattr(exc, "error_code", "")
            if code in ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED"):
                return True
            if code in (
                "INVALID_PARAMETER_VALUE",
                "RESOURCE_DOES_NOT_EXIST",
                "RESOURCE_ALREADY_EXISTS",
                "PERMISSION_DENIED",
                "UNAUTHENTICATED",
                "BAD_REQUEST",
            ):
                return False
    except ImportError:  # pragma: no cover
        pass
    return None


_WRITE_RACE_WORDS = ("unique constraint failed", "integrityerror", "duplicate entry", "duplicate key value")


def is_tag_write_race(exc: BaseException) -> bool:
    """A "set tag" that lost a race with another writer of the same new key.

    Why this exists: MLflow's SQL stores set a tag with ``session.merge`` (SELECT, then INSERT if
    absent), which is not atomic. When two clients set the same *new* key at the same moment both
    see no row, both INSERT, and the second gets ``BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE
    constraint failed`` (MySQL: "Duplicate entry", PostgreSQL: "duplicate key value"). Measured
    against a real ``mlflow server`` (sqlite): 4 clients setting one new tag at once failed on 7
    of 30 models. Setting a tag is an upsert, so repeating it is always correct: the row now
    exists and the repeat updates it. Only use this for tag writes; for other calls such an
    error means something else.
    """
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(w in text for w in _WRITE_RACE_WORDS)


def repeat_if_write_race(
    fn: Callable[[], T], what: str = "tag write", attempts: int = 5, sleep: Callable[[float], None] = time.sleep
) -> T:
    """Call ``fn`` (an idempotent tag/alias write) again while it loses the store's first-write race
    (:func:`is_tag_write_race`); any other error, or a race lost ``attempts`` times, is raised."""
    for attempt in range(attempts - 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if not is_tag_write_race(exc):
                raise
            log.info("MLflow: %s lost a concurrent first write; writing it again", what)
            sleep(0.05 * (attempt + 1))
    return fn()


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter: ``base``, ``2*base``, ... capped at ``max_delay``, until
    ``total`` seconds have passed since the first failure."""

    base: float = 0.5
    max_delay: float = 15.0
    total: float = 120.0
    sleep: Callable[[float], None] = time.sleep

    def call(self, fn: Callable[..., T], *args: Any, what: str = "call", service: str = "MLflow", **kwargs: Any) -> T:
        first_failure: float | None = None
        attempt = 0
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classified below
                if not is_transient(exc):
                    raise
                now = time.monotonic()
                first_failure = now if first_failure is None else first_failure
                waited = now - first_failure
                if waited >= self.total:
                    raise InfrastructureError(
                        f"{service} unreachable: {what} kept failing for {waited:.0f} s "
                        f"({attempt + 1} attempts); last error: {type(exc).__name__}: {str(exc)[:500]}"
                    ) from exc
                delay = min(self.max_delay, self.base * 2**attempt) * (0.75 + 0.5 * random.random())
                delay = min(delay, max(0.0, self.total - waited) + 0.01)
                log.warning(
                    "%s: %s failed (%s: %s); retrying in %.1f s",
                    service,
                    what,
                    type(exc).__name__,
                    str(exc)[:200],
                    delay,
                )
                attempt += 1
                self.sleep(delay)
                continue
            if first_failure is not None:
                log.warning(
                    "%s: %s succeeded after %d retries (%.0f s)",
                    service,
                    what,
                    attempt,
                    time.monotonic() - first_failure,
                )
            return result


def check_reachable(
    uri: str, window: float = 10.0, timeout: float = 3.0, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Fail fast, with :class:`InfrastructureError`, when an ``http(s)://`` tracking server does
    not answer at all; other URIs (sqlite, file) are not probed.

    Why: every MLflow call goes through :class:`RetryPolicy`, which rides out an outage *during*
    a search for two minutes; at start that patience only delays the obvious (a wrong port, a
    server not started): a closed port took 2 min 10 s to be reported. This probe sends
    ``GET <uri>/health`` for at most ``window`` seconds (so a server that is just restarting is
    still waited for briefly); any HTTP answer, even 401 or 404, or a TLS error (left for the
    MLflow client to report with its own settings) counts as reachable. Proxies and TLS settings
    are those of ``requests``, as for the MLflow client. The message names the URI without its
    password."""
    from urllib.parse import urlsplit

    import requests

    from quicktune.tracking.secrets import redact, safe_uri

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    verify: bool | str = True
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        verify = False
    elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    url = uri.rstrip("/") + "/health"
    t0 = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        try:
            requests.get(url, timeout=(timeout, timeout), verify=verify, allow_redirects=False)
            return
        except requests.exceptions.SSLError:
            return
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            waited = time.monotonic() - t0
            if waited + 1.0 >= window:
                reason = redact(f"{type(exc).__name__}: {_root_cause(exc)}")[:300]
                raise InfrastructureError(
                    f"MLflow tracking server {safe_uri(uri)} is not reachable ({attempts} attempts in "
                    f"{waited:.0f} s; last: {reason}). Is it running? Check --tracking-uri or "
                    f"$MLFLOW_TRACKING_URI."
                ) from None
            sleep(1.0)


def _root_cause(exc: BaseException) -> str:
    """The innermost message of a requests/urllib3 error chain (e.g. "Connection refused"),
    without the wrapper's URL and pool details."""
    link: BaseException = exc
    seen = 0
    while seen < 8:
        nxt = link.__cause__ or link.__context__
        if nxt is None and link.args and isinstance(link.args[0], BaseException):
            nxt = link.args[0]
        if nxt is None:
            break
        link, seen = nxt, seen + 1
    text = str(link)
    m = re.search(r"\[Errno -?\d+\] ([^')\]]+)", text)
    return m.group(1) if m else text[:200]
