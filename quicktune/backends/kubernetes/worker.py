"""The warm worker's loop: ``python -m quicktune.backends.kubernetes.worker`` in a worker pod.

Why a loop in a long-lived pod: the fixed costs of a step (interpreter and ``import torch, timm``,
the dataset's S3 mirror, the pretrained weights' download, decoding the images) are paid once per
pod instead of once per epoch. The protocol -- request ConfigMaps, claims by compare-and-set on
``resourceVersion``, leases measured on the observer's clock -- is described in
``quicktune.backends.kubernetes.warm``; this module is the worker's half:

1. list the pool's requests (``--selector``); a request is claimable when ``queued`` (its
   ``preferred-worker`` label, if any, names this pod, or has been waiting for
   ``PREFERENCE_GRACE_SECONDS``), or when its claim has not changed for ``--lease-seconds`` (the
   worker holding it died); own preferred requests first, then by age;
2. claim it with a ``PUT`` carrying the resourceVersion read (``409 Conflict``: someone else was
   first; take the next one);
3. run the step in this process exactly as a step pod runs it (``quicktune step`` through
   ``quicktune.finetune.entry.run_step_main`` with ``StepRequest.argv``, the request's non-secret
   env laid over the pod's for the step's duration), so the checkpoint decides where it resumes
   and the RESULT.json goes to S3 as in the one-Job-per-step mode; its output is captured and
   kept (tail) in the request object;
4. meanwhile a thread renews the lease every ``lease/4`` s; if the claim is gone (cancelled, or
   taken over after an expired lease) or cannot be renewed for ``0.6 x lease``, the process exits
   at once -- it can no longer be sure it is the only one training this config;
5. report ``done`` (the step exited 0: its RESULT.json says how it went), or, when the step raised
   or exited non-zero before writing a result, re-queue it while attempts remain, else ``failed``;
6. exit 0 after ``--idle-seconds`` without a claimable request (the pool shrinks; the controller
   starts workers again when there is work).

Caches kept across requests: everything the process holds (torch/timm imported, timm's model
registry), the step's cache folders (``QUICKTUNE_CACHE``, ``TORCH_HOME``, ``HF_HOME``: the dataset
mirror, synced incrementally by ETag, and downloaded weights) for as long as the pod lives, and
``quicktune.finetune.warm_cache``: the opened dataset (re-checked beside the training), its decoded
images, and the last config's model/optimizer state, which the next step of that config continues
from only when the newest checkpoint is the one this process wrote (else it restores from the
checkpoint: a worker that dies loses nothing, and the checkpoint decides where training resumes).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from quicktune.backends.base import BackendError, StepRequest
from quicktune.backends.kubernetes.api import Conflict, KubernetesApi, default_api_client
from quicktune.backends.kubernetes.manifests import result_uri
from quicktune.backends.kubernetes.warm import (
    A_ATTEMPTS,
    A_CLAIM,
    A_CLAIMED_AT,
    A_DEADLINE,
    A_FINISHED_AT,
    A_MAX_ATTEMPTS,
    A_MESSAGE,
    A_RENEWED_AT,
    A_STATE,
    A_WORKER,
    CLAIMED,
    DONE,
    FAILED_STATE,
    KEY_LOG,
    LABEL_PREFERRED,
    LOG_LIMIT_BYTES,
    PREFERENCE_GRACE_SECONDS,
    QUEUED,
    RequestView,
    set_annotations,
    update_request,
)

log = logging.getLogger("quicktune.k8s.worker")

# After a step the worker lists the requests every BRISK_POLL_SECONDS for BRISK_SECONDS (the
# controller queues a config's next epoch as soon as it has read the result), then every --poll-seconds.
BRISK_SECONDS = 5.0
BRISK_POLL_SECONDS = 0.1

# The step's in-process entry point, as the local fork server names it: named, not imported (the
# backends layer does not import the step's package; the worker runs it as the program it is).
STEP_ENTRY = "quicktune.finetune.entry:run_step_main"


# What this process keeps between steps (``quicktune.finetune.warm_cache``; named, as STEP_ENTRY).
WARM_CACHE = "quicktune.finetune.warm_cache"


def _step_entry() -> Callable[[Sequence[str]], int]:
    module, func = STEP_ENTRY.split(":")
    return getattr(importlib.import_module(module), func)


__all__ = ["Worker", "main"]


class Worker:
    """One worker pod's loop (module docstring). ``api``: a ``KubernetesApi`` of the namespace;
    ``name``: this pod's name (what ``preferred-worker`` labels name)."""

    def __init__(
        self,
        api: KubernetesApi,
        name: str,
        selector: str,
        *,
        lease_seconds: float = 60.0,
        idle_seconds: float = 300.0,
        poll_seconds: float = 1.0,
        device: str = "cpu",
        grace_seconds: float = PREFERENCE_GRACE_SECONDS,
        exit_process: Any = os._exit,
        brisk_seconds: float = BRISK_SECONDS,
    ) -> None:
        self.api = api
        self.name = name
        self.selector = selector
        self.lease = float(lease_seconds)
        self.idle = float(idle_seconds)
        self.poll = float(poll_seconds)
        self.device = device
        self.grace = float(grace_seconds)
        self.brisk = float(brisk_seconds)
        self._exit = exit_process
        self._seen: dict[str, tuple[str, float]] = {}  # name -> (resourceVersion, when first seen at it)
        self.ran: list[str] = []  # requests this worker ran, in order

    # ------------------------------------------------------------------------------- the loop
    def run(self) -> int:
        idle_since = time.monotonic()
        while True:
            # just after a step, the controller usually queues the config's next one: look often
            brisk = time.monotonic() - idle_since < self.brisk
            pause = min(self.poll, BRISK_POLL_SECONDS) if brisk else self.poll
            try:
                items = self.api.list_configmaps(self.selector)
            except BackendError as exc:
                log.warning("cannot list step requests: %s", exc)
                time.sleep(self.poll)
                continue
            for obj in self._claimable(items):
                claimed = self._claim(obj)
                if claimed is not None:
                    self._run(claimed)
                    idle_since = time.monotonic()
                    break
            else:
                if time.monotonic() - idle_since > self.idle:
                    print(f"[quicktune worker {self.name}] idle for {self.idle:.0f} s: exiting", flush=True)
                    return 0
                time.sleep(pause)

    def _claimable(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Requests this worker may claim now, best first (own preferred, unpreferred, others'
        preferred after the grace, expired claims), each group oldest first."""
        now = time.monotonic()
        names = set()
        ranked = []
        for obj in items:
            view = RequestView(obj)
            names.add(view.name)
            rv = str(obj["metadata"].get("resourceVersion"))
            prev = self._seen.get(view.name)
            if prev is None or prev[0] != rv:
                self._seen[view.name] = prev = (rv, now)
            waited = now - prev[1]
            preferred = (obj["metadata"].get("labels") or {}).get(LABEL_PREFERRED)
            if view.state == QUEUED:
                if preferred == self.name:
                    rank = 0
                elif not preferred:
                    rank = 1
                elif waited >= self.grace:
                    rank = 2
                else:
                    continue
            elif view.state == CLAIMED and waited >= self.lease:
                rank = 3  # its worker stopped renewing: died, or cut off from the API server
            else:
                continue
            ranked.append((rank, obj["metadata"].get("creationTimestamp") or "", view.name, obj))
        for gone in set(self._seen) - names:
            del self._seen[gone]
        return [obj for *_, obj in sorted(ranked, key=lambda r: r[:3])]

    def _claim(self, obj: dict[str, Any]) -> tuple[RequestView, str] | None:
        """Compare-and-set the claim onto ``obj`` (as read); None when another writer was first."""
        view = RequestView(obj)
        attempts = view.attempts + 1
        max_attempts = int(view.annotations.get(A_MAX_ATTEMPTS) or 4)
        token = uuid.uuid4().hex
        now = f"{time.time():.3f}"
        if attempts > max_attempts:
            set_annotations(
                view,
                **{
                    A_STATE: FAILED_STATE,
                    A_CLAIM: None,
                    A_FINISHED_AT: now,
                    A_MESSAGE: f"gave up after {attempts - 1} attempts: the worker running it stopped each time "
                    f"(last: {view.worker or '?'}; killed, out of memory, or evicted)",
                },
            )
            token = ""
        else:
            set_annotations(
                view,
                **{
                    A_STATE: CLAIMED,
                    A_CLAIM: token,
                    A_WORKER: self.name,
                    A_ATTEMPTS: str(attempts),
                    A_CLAIMED_AT: now,
                    A_RENEWED_AT: now,
                    A_FINISHED_AT: None,
                },
            )
        try:
            written = self.api.replace_configmap(view.obj)
        except Conflict:
            return None  # another worker (or the controller) changed it first
        except BackendError as exc:
            log.warning("cannot claim %s: %s", view.name, exc)
            return None
        if not token:
            return None
        print(f"[quicktune worker {self.name}] claimed {view.name} (attempt {attempts}/{max_attempts})", flush=True)
        return RequestView(written), token

    # ---------------------------------------------------------------------------- one request
    def _run(self, claimed: tuple[RequestView, str]) -> None:
        view, token = claimed
        name = view.name
        self.ran.append(name)
        stop = threading.Event()
        deadline = float(view.annotations.get(A_DEADLINE) or 0) or None
        renewer = threading.Thread(
            target=self._renew, args=(name, token, stop, deadline), daemon=True, name=f"lease-{name}"
        )
        renewer.start()
        t0 = time.time()
        rc: int | None = None
        output = ""
        try:
            request = view.request()
            rc, output = self._run_step(request, name)
        except Exception:  # noqa: BLE001 - a malformed request: reported, the worker goes on
            output = traceback.format_exc()
        stop.set()
        renewer.join(timeout=self.lease)
        tail = output.encode("utf-8", errors="replace")[-LOG_LIMIT_BYTES:].decode("utf-8", errors="replace")
        why = _last_line(output) if rc != 0 else ""

        def finish(v: RequestView) -> bool:
            if v.annotations.get(A_CLAIM) != token or v.state != CLAIMED:
                return False  # cancelled or taken over meanwhile: not ours to report
            data = v.obj.setdefault("data", {})
            data[KEY_LOG] = tail
            now = f"{time.time():.3f}"
            if rc == 0:
                set_annotations(v, **{A_STATE: DONE, A_FINISHED_AT: now, A_MESSAGE: None})
            else:
                what = f"the step exited with code {rc}" if rc is not None else "the step raised"
                message = f"{what} on worker {self.name}: {why}"
                max_attempts = int(v.annotations.get(A_MAX_ATTEMPTS) or 4)
                if v.attempts < max_attempts:
                    set_annotations(
                        v, **{A_STATE: QUEUED, A_CLAIM: None, A_MESSAGE: f"attempt {v.attempts}: {message}; retrying"}
                    )
                else:
                    set_annotations(v, **{A_STATE: FAILED_STATE, A_FINISHED_AT: now, A_MESSAGE: message})
            return True

        try:
            update_request(self.api, name, finish)
        except BackendError as exc:  # its lease will expire and another worker re-runs it from the checkpoint
            log.error("cannot report %s: %s", name, exc)
        print(f"[quicktune worker {self.name}] {name}: exit {rc} after {time.time() - t0:.1f} s", flush=True)

    def _run_step(self, request: StepRequest, name: str) -> tuple[int | None, str]:
        """``quicktune step`` for ``request`` in this process, output captured (and echoed to the
        pod's log); the request's env overrides apply for the step's duration only."""
        run_step_main = _step_entry()
        workdir = Path(os.environ.get("QUICKTUNE_WORKDIR") or tempfile.gettempdir()) / name
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "config.json"
        config_path.write_text(json.dumps(dict(request.config), sort_keys=True))
        argv = request.argv(
            out=result_uri(request), config_path=str(config_path), device="cuda" if self.device == "cuda" else None
        )
        saved = {k: os.environ.get(k) for k in request.extra_env}
        log_path = workdir / "step.log"
        rc: int | None = None
        with open(log_path, "w+b") as capture:
            sys.stdout.flush()
            sys.stderr.flush()
            fds = os.dup(1), os.dup(2)
            os.dup2(capture.fileno(), 1)
            os.dup2(capture.fileno(), 2)
            try:
                os.environ.update({str(k): str(v) for k, v in request.extra_env.items()})
                rc = run_step_main(argv)
            except Exception:  # noqa: BLE001 - the step crashed before writing a result
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(fds[0], 1)
                os.dup2(fds[1], 2)
                os.close(fds[0])
                os.close(fds[1])
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            capture.seek(0)
            output = capture.read().decode("utf-8", errors="replace")
        sys.stdout.write(output)
        sys.stdout.flush()
        return rc, output

    def _renew(self, name: str, token: str, stop: threading.Event, deadline: float | None) -> None:
        """Renew the lease until ``stop``; exit the process when the claim is lost (module docstring)."""
        last_ok = started = time.monotonic()
        lost: list[str] = []

        def renew(v: RequestView) -> bool:
            if v.annotations.get(A_CLAIM) != token or v.state != CLAIMED:
                lost.append(v.state)
                return False
            set_annotations(v, **{A_RENEWED_AT: f"{time.time():.3f}"})
            return True

        while not stop.wait(self.lease / 4):
            if deadline is not None and time.monotonic() - started > deadline:
                self._give_up(name, token, f"DeadlineExceeded: the step ran longer than {deadline:.0f} s")
                return
            try:
                written = update_request(self.api, name, renew)
            except BackendError as exc:
                if time.monotonic() - last_ok > 0.6 * self.lease:
                    print(
                        f"[quicktune worker {self.name}] cannot renew the lease of {name} ({exc}): exiting", flush=True
                    )
                    self._exit(1)
                    return
                continue
            if written is None and not stop.is_set():
                state = lost[-1] if lost else "deleted"
                print(
                    f"[quicktune worker {self.name}] {name} is no longer mine ({state}): stopping its step", flush=True
                )
                self._exit(0)
                return
            last_ok = time.monotonic()

    def _give_up(self, name: str, token: str, message: str) -> None:
        def fail(v: RequestView) -> bool:
            if v.annotations.get(A_CLAIM) != token:
                return False
            set_annotations(v, **{A_STATE: FAILED_STATE, A_FINISHED_AT: f"{time.time():.3f}", A_MESSAGE: message})
            return True

        try:
            update_request(self.api, name, fail)
        finally:
            print(f"[quicktune worker {self.name}] {name}: {message}: exiting", flush=True)
            self._exit(0)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "no output"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m quicktune.backends.kubernetes.worker", description=__doc__)
    p.add_argument("--selector", required=True, help="label selector of the requests this pool serves")
    p.add_argument("--lease-seconds", type=float, default=60.0)
    p.add_argument("--idle-seconds", type=float, default=300.0)
    p.add_argument("--poll-seconds", type=float, default=1.0)
    p.add_argument("--device", default="cpu", help="cpu, or cuda for a pod with a GPU")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    namespace = os.environ.get("QUICKTUNE_WORKER_NAMESPACE")
    name = os.environ.get("QUICKTUNE_WORKER_POD") or socket.gethostname()
    if not namespace:
        print("quicktune worker: QUICKTUNE_WORKER_NAMESPACE is not set (the pod's namespace)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    _step_entry()  # the step's imports, once (torch; timm with the first step)
    importlib.import_module("quicktune.finetune.step")
    importlib.import_module(WARM_CACHE).enable()  # datasets, decoded images, the last config's state

    print(f"[quicktune worker {name}] ready in {time.perf_counter() - t0:.1f} s; serving {args.selector}", flush=True)
    worker = Worker(
        KubernetesApi(default_api_client(), namespace),
        name,
        args.selector,
        lease_seconds=args.lease_seconds,
        idle_seconds=args.idle_seconds,
        poll_seconds=args.poll_seconds,
        device=args.device,
    )
    return worker.run()


if __name__ == "__main__":  # pragma: no cover - the worker pod's command
    sys.exit(main())
