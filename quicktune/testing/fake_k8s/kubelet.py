"""The fake node's kubelet: pods as local processes, with the kubelet's ``$(VAR)`` expansion.

A pod's container ``command``/``args`` run as a local subprocess with the pod's env, where
``envFrom`` and ``secretKeyRef`` resolve against Secrets stored in the fake (a missing Secret
leaves the pod in ``CreateContainerConfigError``, as on a real node). ``$(VAR)`` references in
``env[].value``, ``command`` and ``args`` are expanded exactly as the kubelet does (``expand``: the
env the pod declares, Secrets from ``envFrom`` included, defined-before order for env entries,
``$$`` -> ``$``), so a generated pod spec that forgets to escape a user-supplied string leaks the
Secret in a test as it would on a cluster (``container_argv`` shows what the process got). The
image's entrypoint maps to the local venv's ``quicktune`` command. ``emptyDir`` volumes become a
private folder per pod; as there is no mount namespace, values of the container's ``env`` that
start with a mount path are rewritten to that folder (args are not). ``preempt()`` kills a pod
the way the scheduler's preemption does (``DisruptionTarget`` condition, then SIGTERM/SIGKILL);
``oom_kill()`` as the kernel's OOM killer does (exit 137, reason ``OOMKilled``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quicktune.testing.fake_k8s.store import FakeClusterError, Reject, now


class PodRuntime:
    """The kubelet's view of one pod: its process, folder and log."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.log_path = folder / "container.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.kill_reason: str | None = None  # "preempted" | "deadline" | "deleted" | "oom"
        self.killed_at: float | None = None
        self.argv: list[str] | None = None  # the container's argv after the kubelet's $(VAR) expansion
        self.declared_env: dict[str, str] = {}  # the env the pod spec declares, as the kubelet resolved it


def expand(value: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion (k8s.io/kubernetes ``third_party/forked/golang/expansion``
    ``Expand`` with ``MappingFuncFor(env)``), character for character.

    ``$(NAME)`` becomes ``env[NAME]`` when NAME is defined (whatever NAME contains, up to the first
    ``)``; the value is not expanded again) and stays ``$(NAME)`` when it is not; ``$$`` becomes
    ``$`` (so ``$$(NAME)`` is the literal ``$(NAME)``); a ``$`` followed by anything else, an
    unterminated ``$(`` and a ``$`` at the very end are kept as they are.
    """
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    n = len(value)
    while cursor < n:
        if value[cursor] == "$" and cursor + 1 < n:
            out.append(value[checkpoint:cursor])
            nxt = value[cursor + 1]
            if nxt == "$":  # escaped operator
                out.append("$")
                advance = 1
            elif nxt == "(":
                close = value.find(")", cursor + 2)
                if close < 0:  # incomplete reference: keep "$(" and go on after it
                    out.append("$(")
                    advance = 1
                else:
                    name = value[cursor + 2 : close]
                    out.append(env[name] if name in env else f"$({name})")
                    advance = close - cursor
            else:  # not an expression: the operator and the next character
                out.append("$" + nxt)
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + value[checkpoint:]


def _tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("operator") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint.get("key")
    return toleration.get("key") == taint.get("key") and toleration.get("value") == taint.get("value")


def _set_pod_condition(pod: dict[str, Any], ctype: str, status: str, reason: str = "", message: str = "") -> None:
    conds = [c for c in pod["status"].get("conditions", []) if c["type"] != ctype]
    cond = {"type": ctype, "status": status, "lastTransitionTime": now()}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    pod["status"]["conditions"] = conds + [cond]


class Kubelet:
    """The kubelet of the single fake node: schedules pending pods, runs their container as a
    local process, reports its exit, serves its log. Mixed into ``FakeCluster``."""

    def container_argv(self, pod_name: str, namespace: str = "default") -> list[str] | None:
        """The argv a pod's container was started with, after the kubelet's ``$(VAR)`` expansion."""
        with self._lock:
            rt = self._runtime.get((namespace, pod_name))
            return None if rt is None or rt.argv is None else list(rt.argv)

    def running_pods(self, namespace: str = "default") -> list[str]:
        with self._lock:
            return sorted(
                n
                for (ns, n), p in self.pods.items()
                if ns == namespace and p["status"].get("phase") == "Running" and (ns, n) in self._runtime
            )

    def preempt(self, job_name: str, namespace: str = "default", reason: str = "PreemptionByScheduler") -> str:
        """Preempt the Job's running pod: add ``DisruptionTarget`` and kill it; returns the pod name."""
        with self._lock:
            for p in self.pods_of(job_name, namespace):
                key = (namespace, p["metadata"]["name"])
                pod = self.pods[key]
                if pod["status"].get("phase") == "Running":
                    conds = pod["status"].setdefault("conditions", [])
                    conds.append(
                        {
                            "type": "DisruptionTarget",
                            "status": "True",
                            "reason": reason,
                            "message": "fake-cluster: pod preempted to make room for a higher-priority pod",
                            "lastTransitionTime": now(),
                        }
                    )
                    self._bump(pod)
                    rt = self._runtime[key]
                    break
            else:
                raise FakeClusterError(f"Job {job_name} has no running pod to preempt")
        self._kill(rt, "preempted")
        return key[1]

    def oom_kill(self, job_name: str, namespace: str = "default") -> str:
        """SIGKILL the Job's running pod as the kernel OOM killer would (reason OOMKilled, exit 137)."""
        with self._lock:
            for p in self.pods_of(job_name, namespace):
                key = (namespace, p["metadata"]["name"])
                if p["status"].get("phase") == "Running":
                    rt = self._runtime[key]
                    break
            else:
                raise FakeClusterError(f"Job {job_name} has no running pod")
        self._kill(rt, "oom", grace=0)
        return key[1]

    def _schedulable(self, pod: dict[str, Any]) -> str | None:
        spec = pod["spec"]
        for k, v in (spec.get("nodeSelector") or {}).items():
            if self.node_labels.get(k) != v:
                return f"0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector ({k}={v})"
        for taint in self.node_taints:
            if taint.get("effect") not in ("NoSchedule", "NoExecute"):
                continue
            if not any(_tolerates(t, taint) for t in spec.get("tolerations") or []):
                return (
                    f"0/1 nodes are available: 1 node(s) had untolerated taint {{{taint['key']}: {taint.get('value')}}}"
                )
        want = sum(
            int((c.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in spec["containers"]
        )
        if want:
            used = sum(
                int((c.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu", 0))
                for k, p in self.pods.items()
                if p is not pod and p["status"].get("phase") == "Running"
                for c in p["spec"]["containers"]
            )
            if used + want > self.gpus:
                return f"0/1 nodes are available: 1 Insufficient nvidia.com/gpu (want {want}, free {self.gpus - used})"
        return None

    def _kubelet_sync(self, pkey: tuple[str, str]) -> None:
        with self._lock:
            pod = self.pods.get(pkey)
            rt = self._runtime.get(pkey)
            if rt is None:
                return
            if pod is None:  # deleted: reap once the process is gone
                if rt.proc is None or rt.proc.poll() is not None:
                    self._runtime.pop(pkey, None)
                return
            phase = pod["status"].get("phase")
            if phase == "Pending" and rt.proc is None:
                why = self._schedulable(pod)
                if why:
                    _set_pod_condition(pod, "PodScheduled", "False", "Unschedulable", why)
                    self._bump(pod)
                    return
                _set_pod_condition(pod, "PodScheduled", "True")
                try:
                    cmd, env, cwd = self._container_process(pod, rt)
                except Reject as exc:
                    pod["status"]["containerStatuses"] = [
                        {
                            "name": pod["spec"]["containers"][0]["name"],
                            "ready": False,
                            "restartCount": 0,
                            "image": pod["spec"]["containers"][0]["image"],
                            "imageID": "",
                            "state": {
                                "waiting": {"reason": "CreateContainerConfigError", "message": exc.status["message"]}
                            },
                        }
                    ]
                    self._bump(pod)
                    return
                with open(rt.log_path, "ab") as logf:
                    rt.proc = subprocess.Popen(
                        cmd,
                        env=env,
                        cwd=cwd,
                        stdout=logf,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                c = pod["spec"]["containers"][0]
                pod["status"].update(phase="Running", startTime=now(), hostIP="127.0.0.1", podIP="127.0.0.1")
                pod["status"]["containerStatuses"] = [
                    {
                        "name": c["name"],
                        "ready": True,
                        "restartCount": 0,
                        "image": c["image"],
                        "imageID": "",
                        "started": True,
                        "state": {"running": {"startedAt": now()}},
                    }
                ]
                _set_pod_condition(pod, "Ready", "True")
                self._bump(pod)
                return
            if phase == "Running" and rt.proc is not None:
                code = rt.proc.poll()
                if code is None:
                    return
                exit_code = 128 - code if code < 0 else code
                if rt.kill_reason == "oom":
                    reason = "OOMKilled"
                elif exit_code == 0:
                    reason = "Completed"
                else:
                    reason = "Error"
                c = pod["status"]["containerStatuses"][0]
                c.update(
                    ready=False,
                    started=False,
                    state={
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": reason,
                            "startedAt": pod["status"]["startTime"],
                            "finishedAt": now(),
                        }
                    },
                )
                pod["status"]["phase"] = "Succeeded" if exit_code == 0 else "Failed"
                if rt.kill_reason == "deadline":
                    pod["status"]["reason"] = "DeadlineExceeded"
                _set_pod_condition(pod, "Ready", "False", "PodCompleted")
                self._bump(pod)

    def _container_process(self, pod: dict[str, Any], rt: PodRuntime) -> tuple[list[str], dict[str, str], str]:
        """Resolve a pod's single container to (argv, env, cwd) as a kubelet + container runtime would."""
        spec = pod["spec"]
        ns = pod["metadata"]["namespace"]
        if len(spec["containers"]) != 1:
            raise Reject(422, "Invalid", "the fake kubelet runs pods with exactly one container")
        c = spec["containers"][0]
        ctx = {**(spec.get("securityContext") or {}), **(c.get("securityContext") or {})}
        if ctx.get("runAsNonRoot") and ctx.get("runAsUser") in (None, 0):
            raise Reject(422, "Invalid", "container has runAsNonRoot and image will run as root")
        # emptyDir volumes: a private folder per pod, mount paths rewritten in env and args
        mounts: list[tuple[str, str]] = []
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for m in c.get("volumeMounts") or []:
            vol = volumes.get(m["name"])
            if vol is None or "emptyDir" not in vol:
                raise Reject(422, "Invalid", f"volume {m['name']!r}: the fake kubelet only supports emptyDir")
            host = rt.folder / "volumes" / m["name"]
            host.mkdir(parents=True, exist_ok=True)
            mounts.append((m["mountPath"].rstrip("/") or "/", str(host)))
        mounts.sort(key=lambda m: -len(m[0]))

        def rewrite(value: str) -> str:
            for path, host in mounts:
                if value == path or value.startswith(path + "/"):
                    return host + value[len(path) :]
            return value

        # What the kubelet does (pkg/kubelet makeEnvironmentVariables): envFrom first, unexpanded; then
        # each env entry in order, a plain value expanded against what is defined so far (envFrom and
        # earlier entries), valueFrom values taken as they are; command and args are then expanded
        # against the container's whole env. The image's own env (here PATH, LANG, HOSTNAME and
        # node_env) is not known to the kubelet and takes no part in expansion.
        declared: dict[str, str] = {}
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "secretRef" in src:
                data = self._lookup(
                    self.secrets, ns, src["secretRef"]["name"], "secret", src["secretRef"].get("optional", False)
                )
            else:
                data = self._lookup(
                    self.configmaps,
                    ns,
                    src["configMapRef"]["name"],
                    "configmap",
                    src["configMapRef"].get("optional", False),
                )
            declared.update({prefix + k: v for k, v in data.items()})
        for e in c.get("env") or []:
            if e.get("value"):
                declared[e["name"]] = expand(e["value"], declared)
            elif "valueFrom" in e:
                vf = e["valueFrom"]
                if "secretKeyRef" in vf or "configMapKeyRef" in vf:
                    ref = vf.get("secretKeyRef") or vf["configMapKeyRef"]
                    store, kind = (self.secrets, "secret") if "secretKeyRef" in vf else (self.configmaps, "configmap")
                    data = self._lookup(store, ns, ref["name"], kind, ref.get("optional", False))
                    if ref["key"] not in data:
                        if ref.get("optional"):
                            continue
                        raise Reject(
                            422, "Invalid", f"couldn't find key {ref['key']} in {kind.capitalize()} {ns}/{ref['name']}"
                        )
                    declared[e["name"]] = data[ref["key"]]
                elif "fieldRef" in vf:
                    field = vf["fieldRef"]["fieldPath"]
                    labels = pod["metadata"].get("labels") or {}
                    label = re.fullmatch(r"metadata\.labels\['([^']+)'\]", field)
                    declared[e["name"]] = (
                        labels.get(label.group(1), "")
                        if label
                        else {
                            "metadata.name": pod["metadata"]["name"],
                            "metadata.namespace": ns,
                            "metadata.uid": pod["metadata"]["uid"],
                        }.get(field, "")
                    )
            else:
                declared[e["name"]] = ""
        args = [expand(a, declared) for a in c.get("args") or []]
        if c.get("command"):
            command = [expand(a, declared) for a in c["command"]]
            if command[0] == "quicktune":
                command = self.quicktune_cmd + command[1:]
            argv = command + args
        else:
            argv = list(self.entrypoints.get(c["image"], self.quicktune_cmd)) + args
        env: dict[str, str] = {"PATH": self.path, "LANG": "C.UTF-8", "HOSTNAME": pod["metadata"]["name"]}
        env.update(self.node_env)
        env.update({k: rewrite(v) for k, v in declared.items()})
        rt.argv, rt.declared_env = list(argv), dict(declared)
        return argv, env, str(rt.folder)

    def _lookup(
        self, store: Mapping[tuple[str, str], dict[str, str]], ns: str, name: str, kind: str, optional: bool
    ) -> dict[str, str]:
        if (ns, name) in store:
            return store[(ns, name)]
        if optional:
            return {}
        raise Reject(422, "Invalid", f'{kind} "{name}" not found')

    def _kill(self, rt: PodRuntime, reason: str, grace: float | None = None) -> None:
        """SIGTERM the pod's process group, then SIGKILL after the grace period."""
        proc = rt.proc
        if rt.kill_reason is None:
            rt.kill_reason = reason
        if proc is None or proc.poll() is not None:
            return
        grace = self.grace_seconds if grace is None else grace
        try:
            os.killpg(proc.pid, signal.SIGKILL if grace <= 0 else signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=max(grace, 0.1))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)

    def pod_log(self, ns: str, name: str, query: Mapping[str, list[str]]) -> bytes:
        with self._lock:
            pod = self.pods.get((ns, name))
            rt = self._runtime.get((ns, name))
        if pod is None:
            raise Reject(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        names = [c["name"] for c in pod["spec"]["containers"]]
        container = (query.get("container") or [names[0]])[0]
        if container not in names:
            raise Reject(400, "BadRequest", f"container {container} is not valid for pod {name}")
        if rt is None or rt.proc is None:
            raise Reject(
                400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating'
            )
        data = rt.log_path.read_bytes() if rt.log_path.exists() else b""
        if "tailLines" in query:
            n = int(query["tailLines"][0])
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-n:]) if n > 0 else b""
        if "limitBytes" in query:
            data = data[: int(query["limitBytes"][0])]
        return data
