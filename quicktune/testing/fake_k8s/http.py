"""The fake API server's HTTP boundary: the REST paths the backend uses, nothing else.

* ``batch/v1`` Jobs: create, get, list (label selectors), watch (resourceVersion, bookmarks,
  ``timeoutSeconds``, ``410 Gone`` for expired versions), delete (Background / Foreground /
  Orphan propagation). A name that exists gets ``409``.
* ``v1`` Pods: get, list (label selectors) and ``pods/log`` (``tailLines``, ``limitBytes``).
* ``v1`` ConfigMaps: create, get, list (label selectors), replace (``PUT``, ``409 Conflict`` on a
  stale ``resourceVersion``), delete (``configmaps``).
* Anything else answers 404 and is recorded in ``unsupported_requests`` (tests assert it stays
  empty, i.e. the backend uses no endpoint this double does not model).

Answers are what the official ``kubernetes`` client expects: JSON objects, ``Status`` objects for
errors, chunked newline-delimited events for watches.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from quicktune.testing.fake_k8s.store import Reject, match_selector, status_object


def _flag(query: Mapping[str, list[str]], name: str) -> bool:
    """A boolean query parameter, parsed like Go's strconv.ParseBool (the client sends ``True``)."""
    return (query.get(name) or ["false"])[0].lower() in ("true", "1", "t")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: Any  # the FakeCluster serving (set by FakeCluster.start on a subclass; Any: no import circle)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    # routing -------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def _body(self) -> dict[str, Any] | None:
        n = int(self.headers.get("Content-Length") or 0)
        if not n:
            return None
        raw = self.rfile.read(n)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise Reject(400, "BadRequest", f"request body is not JSON: {exc}") from None

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        q = parse_qs(url.query)
        parts = [p for p in url.path.split("/") if p]
        fake = self.fake
        try:
            body = self._body() if method in ("POST", "PUT", "PATCH", "DELETE") else None
            # /apis/batch/v1/namespaces/{ns}/jobs[/{name}]
            if (
                parts[:3] == ["apis", "batch", "v1"]
                and len(parts) in (6, 7)
                and parts[3] == "namespaces"
                and parts[5] == "jobs"
            ):
                ns = parts[4]
                if len(parts) == 6 and method == "GET":
                    selector = (q.get("labelSelector") or [None])[0]
                    if _flag(q, "watch"):
                        return self._watch_jobs(ns, selector, q)
                    return self._send(200, fake.list_jobs(ns, selector))
                if len(parts) == 6 and method == "POST":
                    if body is None:
                        raise Reject(400, "BadRequest", "missing request body")
                    name = (body.get("metadata") or {}).get("name", "?")
                    try:
                        created = fake.create_job(ns, body)
                    except Reject as exc:
                        fake.create_attempts.append((name, exc.status["code"]))
                        raise
                    fake.create_attempts.append((name, 201))
                    warning = fake._pod_security(ns, "warn", (body.get("spec") or {}).get("template") or {})
                    headers = {"Warning": '299 - "' + warning.replace('"', "'") + '"'} if warning else {}
                    return self._send(201, created, headers)
                if len(parts) == 7 and method == "GET":
                    job = fake.job(parts[6], ns)
                    if job is None:
                        raise Reject(
                            404,
                            "NotFound",
                            f'jobs.batch "{parts[6]}" not found',
                            {"name": parts[6], "group": "batch", "kind": "jobs"},
                        )
                    return self._send(200, job)
                if len(parts) == 7 and method == "DELETE":
                    prop = (body or {}).get("propagationPolicy") or (q.get("propagationPolicy") or ["Orphan"])[0]
                    if prop not in ("Background", "Foreground", "Orphan"):
                        raise Reject(400, "BadRequest", f"invalid propagationPolicy {prop!r}")
                    if body and body.get("kind", "DeleteOptions") != "DeleteOptions":
                        raise Reject(400, "BadRequest", "body must be DeleteOptions")
                    job = fake._delete_job((ns, parts[6]), prop)
                    if job is None:
                        raise Reject(
                            404,
                            "NotFound",
                            f'jobs.batch "{parts[6]}" not found',
                            {"name": parts[6], "group": "batch", "kind": "jobs"},
                        )
                    return self._send(200, job)
            # /api/v1/namespaces/{ns}/configmaps[/{name}]
            if (
                parts[:2] == ["api", "v1"]
                and len(parts) in (5, 6)
                and parts[2] == "namespaces"
                and parts[4] == "configmaps"
            ):
                ns = parts[3]
                if len(parts) == 5 and method == "GET":
                    if _flag(q, "watch"):
                        raise Reject(405, "MethodNotAllowed", "the fake does not serve ConfigMap watches")
                    return self._send(200, fake.list_configmaps(ns, (q.get("labelSelector") or [None])[0]))
                if len(parts) == 5 and method == "POST":
                    if body is None:
                        raise Reject(400, "BadRequest", "missing request body")
                    return self._send(201, fake.create_configmap(ns, body))
                if len(parts) == 6 and method == "GET":
                    return self._send(200, fake.read_configmap(ns, parts[5]))
                if len(parts) == 6 and method == "PUT":
                    if body is None:
                        raise Reject(400, "BadRequest", "missing request body")
                    return self._send(200, fake.replace_configmap(ns, parts[5], body))
                if len(parts) == 6 and method == "DELETE":
                    return self._send(200, fake.delete_configmap(ns, parts[5]))
            # /api/v1/namespaces/{ns}/pods[/{name}[/log]]
            if (
                parts[:2] == ["api", "v1"]
                and len(parts) in (5, 6, 7)
                and parts[2] == "namespaces"
                and parts[4] == "pods"
                and method == "GET"
            ):
                ns = parts[3]
                if len(parts) == 5:
                    if _flag(q, "watch"):
                        raise Reject(405, "MethodNotAllowed", "the fake does not serve pod watches")
                    return self._send(200, fake.list_pods(ns, (q.get("labelSelector") or [None])[0]))
                if len(parts) == 6:
                    with fake._lock:
                        pod = copy.deepcopy(fake.pods.get((ns, parts[5])))
                    if pod is None:
                        raise Reject(
                            404, "NotFound", f'pods "{parts[5]}" not found', {"name": parts[5], "kind": "pods"}
                        )
                    return self._send(200, pod)
                if parts[6] == "log":
                    return self._send_raw(200, fake.pod_log(ns, parts[5], q), "text/plain")
            fake.unsupported_requests.append((method, self.path))
            raise Reject(
                404,
                "NotFound",
                f"the server could not find the requested resource (fake cluster: {method} {url.path} is not modelled)",
            )
        except Reject as exc:
            if exc.status["code"] in (400, 422):  # invalid input (404 / 409 are ordinary answers)
                fake.rejected.append(exc.status)
            self._send(exc.status["code"], exc.status)
        except (BrokenPipeError, ConnectionResetError):
            pass

    # responses -----------------------------------------------------------------------------
    def _send(self, code: int, obj: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        self._send_raw(code, json.dumps(obj).encode(), "application/json", headers)

    def _send_raw(self, code: int, data: bytes, ctype: str, headers: Mapping[str, str] | None = None) -> None:
        self.fake.requests.append((self.command, self.path, code))
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, obj: Mapping[str, Any]) -> None:
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch_jobs(self, ns: str, selector: str | None, q: Mapping[str, list[str]]) -> None:
        fake = self.fake
        timeout = float((q.get("timeoutSeconds") or ["1800"])[0])
        bookmarks = _flag(q, "allowWatchBookmarks")
        rv_param = (q.get("resourceVersion") or [""])[0]
        fake.requests.append(("GET", self.path, 200))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.monotonic() + timeout
        with fake._lock:
            generation = fake._watch_generation
            if rv_param in ("", "0"):
                initial = [("ADDED", j) for j in fake.list_jobs(ns, selector)["items"]]
                last = fake._rv
            else:
                last = int(rv_param)
                initial = []
                if last < fake._compacted_rv:
                    initial = None
        try:
            if initial is None:
                self._chunk(
                    {
                        "type": "ERROR",
                        "object": status_object(
                            410, "Expired", f"too old resource version: {last} ({fake._compacted_rv})"
                        ),
                    }
                )
                return
            for etype, obj in initial:
                self._chunk({"type": etype, "object": obj})
            next_bookmark = time.monotonic() + 1.0
            while not fake._stopping.is_set():
                with fake._changed:
                    if fake._watch_generation != generation:
                        gone = True
                    else:
                        gone = False
                        pending = [(rv, t, o) for rv, t, o in fake._job_events if rv > last]
                        if not pending:
                            fake._changed.wait(timeout=0.25)
                            pending = [(rv, t, o) for rv, t, o in fake._job_events if rv > last]
                        current_rv = fake._rv
                if gone:
                    self._chunk(
                        {
                            "type": "ERROR",
                            "object": status_object(
                                410, "Expired", "too old resource version (the fake cluster expired all watches)"
                            ),
                        }
                    )
                    return
                for rv, etype, obj in pending:
                    last = rv
                    if obj["metadata"]["namespace"] == ns and match_selector(
                        obj["metadata"].get("labels") or {}, selector
                    ):
                        self._chunk({"type": etype, "object": obj})
                if bookmarks and time.monotonic() >= next_bookmark:
                    last = max(last, current_rv)
                    self._chunk(
                        {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": "Job",
                                "apiVersion": "batch/v1",
                                "metadata": {"resourceVersion": str(last)},
                            },
                        }
                    )
                    next_bookmark = time.monotonic() + 1.0
                if time.monotonic() >= deadline:
                    return
        finally:
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                pass
            self.close_connection = True
