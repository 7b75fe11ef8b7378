"""Admission in the fake API server: schema validation, semantic checks, Pod Security Admission.

Every object received is validated with ``kubernetes_validate.validate(obj, version,
strict=True)`` for each configured Kubernetes version, plus the semantic checks the schema cannot
express (``semantic_checks``: names, label syntax, podFailurePolicy needs restartPolicy Never);
an invalid object is refused with a ``422 Invalid`` Status like a real API server.

**Pod Security Admission**: a namespace labelled with ``add_namespace(ns, {"pod-security.kubernetes.io/
enforce": "restricted"})`` gets the Pod Security Standards' checks (``pod_security_violations``) on
every pod the Job controller creates (a violating pod is refused and recorded in
``admission_denials``; the Job stays without pods) and, with ``.../warn``, a ``Warning`` header on
Job creations whose template would violate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from quicktune.testing.fake_k8s.store import Reject

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")

# Pod Security Standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/), the
# checks of k8s.io/pod-security-admission for the levels "baseline" and "restricted" (latest).
_BASELINE_CAPS = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def pod_security_violations(
    spec: Mapping[str, Any], level: str = "restricted", metadata: Mapping[str, Any] | None = None
) -> list[str]:
    """The ways a pod spec breaks the Pod Security Standard ``level`` ("baseline" or "restricted";
    "privileged" allows everything), one readable line each; empty when the pod is admitted.

    Used by the fake API server (namespaces labelled ``pod-security.kubernetes.io/enforce``) and by
    tests that check every pod template quicktune generates or ships."""
    if level not in ("privileged", "baseline", "restricted"):
        raise ValueError(f"unknown Pod Security level {level!r}")
    if level == "privileged":
        return []
    out: list[str] = []
    containers = [
        (kind, c) for kind in ("initContainers", "containers", "ephemeralContainers") for c in spec.get(kind) or []
    ]
    psc = spec.get("securityContext") or {}
    # --- baseline
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(f"host namespaces ({key}=true)")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("hostProcess (pod windowsOptions.hostProcess=true)")
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            out.append(f"hostPath volumes (volume {v.get('name')!r})")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            out.append(f"forbidden sysctls ({sysctl.get('name')})")
    annotations = (metadata or {}).get("annotations") or {}
    for key, value in annotations.items():
        if (
            key.startswith("container.apparmor.security.beta.kubernetes.io/")
            and value != "runtime/default"
            and not str(value).startswith("localhost/")
        ):
            out.append(f"forbidden AppArmor profile ({key}={value})")

    def selinux(where: str, opts: Mapping[str, Any] | None) -> None:
        if opts and (opts.get("type", "") not in _SELINUX_TYPES or opts.get("user") or opts.get("role")):
            out.append(f"seLinuxOptions ({where})")

    def apparmor(where: str, sc: Mapping[str, Any]) -> None:
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            out.append(f"forbidden AppArmor profile ({where}: Unconfined)")

    selinux("pod", psc.get("seLinuxOptions"))
    apparmor("pod", psc)
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        out.append("seccompProfile (pod: Unconfined)")
    for kind, c in containers:
        name, sc = c.get("name"), c.get("securityContext") or {}
        where = f"{kind[:-1]} {name!r}"
        if sc.get("privileged"):
            out.append(f"privileged ({where})")
        added = set((sc.get("capabilities") or {}).get("add") or [])
        if added - _BASELINE_CAPS:
            out.append(f"non-default capabilities ({where}: {sorted(added - _BASELINE_CAPS)})")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"hostPort ({where}: {port['hostPort']})")
        selinux(where, sc.get("seLinuxOptions"))
        apparmor(where, sc)
        if sc.get("procMount", "Default") != "Default":
            out.append(f"procMount ({where}: {sc['procMount']})")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append(f"seccompProfile ({where}: Unconfined)")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"hostProcess ({where})")
    if level == "baseline":
        return out
    # --- restricted
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if kinds - _RESTRICTED_VOLUMES:
            out.append(f"restricted volume types (volume {v.get('name')!r}: {sorted(kinds - _RESTRICTED_VOLUMES)})")
    if psc.get("runAsUser") == 0:
        out.append("runAsUser=0 (pod)")
    for kind, c in containers:
        name, sc = c.get("name"), c.get("securityContext") or {}
        where = f"{kind[:-1]} {name!r}"
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"allowPrivilegeEscalation != false ({where})")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"unrestricted capabilities ({where} must drop ALL)")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"unrestricted capabilities ({where} may add only NET_BIND_SERVICE)")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"runAsNonRoot != true ({where})")
        if sc.get("runAsUser") == 0:
            out.append(f"runAsUser=0 ({where})")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"seccompProfile ({where} must set RuntimeDefault or Localhost, or the pod must)")
    return out


def semantic_checks(obj: Mapping[str, Any]) -> None:
    """What the API server's validation does beyond the OpenAPI schema (the parts we use)."""
    kind = obj.get("kind")
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    errors: list[str] = []
    if not name:
        errors.append("metadata.name: Required value")
    elif kind == "Job" and (len(name) > 63 or not _DNS_LABEL.match(name)):
        errors.append(f"metadata.name: Invalid value: {name!r}: must be a DNS-1123 label of at most 63 characters")
    elif not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
        errors.append(f"metadata.name: Invalid value: {name!r}: must be a DNS-1123 subdomain")

    def check_labels(where: str, labels: Mapping[str, Any]) -> None:
        for k, v in (labels or {}).items():
            prefix, _, lname = k.rpartition("/")
            if len(lname) > 63 or not _LABEL_NAME.match(lname) or (prefix and not _DNS_SUBDOMAIN.match(prefix)):
                errors.append(f"{where}: Invalid value: {k!r}: not a valid label key")
            if not isinstance(v, str) or len(v) > 63 or not _LABEL_VALUE.match(v):
                errors.append(
                    f"{where}: Invalid value: {v!r}: a valid label value must be 63 characters or less, "
                    "and begin and end with an alphanumeric character"
                )

    check_labels("metadata.labels", meta.get("labels") or {})
    pod_spec = None
    if kind == "Job":
        spec = obj.get("spec") or {}
        check_labels("spec.template.metadata.labels", (spec.get("template", {}).get("metadata") or {}).get("labels"))
        pod_spec = spec.get("template", {}).get("spec") or {}
        if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
            errors.append('spec.template.spec.restartPolicy: Required value: valid values: "OnFailure", "Never"')
        if spec.get("podFailurePolicy") and pod_spec.get("restartPolicy") != "Never":
            errors.append("spec.podFailurePolicy: Invalid value: only allowed with restartPolicy Never")
        names = {c.get("name") for c in pod_spec.get("containers") or []}
        for i, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules") or []):
            cn = (rule.get("onExitCodes") or {}).get("containerName")
            if cn and cn not in names:
                errors.append(f"spec.podFailurePolicy.rules[{i}].onExitCodes.containerName: Invalid value: {cn!r}")
    elif kind == "Pod":
        pod_spec = obj.get("spec") or {}
    if pod_spec is not None:
        for c in pod_spec.get("containers") or []:
            if not _DNS_LABEL.match(c.get("name", "")):
                errors.append(f"containers.name: Invalid value: {c.get('name')!r}")
            for e in c.get("env") or []:
                if not _ENV_NAME.match(e.get("name", "")):
                    errors.append(f"env.name: Invalid value: {e.get('name')!r}")
                if "value" in e and "valueFrom" in e:
                    errors.append(f"env[{e['name']}]: may not have both value and valueFrom")
            vols = {v.get("name") for v in pod_spec.get("volumes") or []}
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in vols:
                    errors.append(f"volumeMounts.name: Not found: {m.get('name')!r}")
    for o in meta.get("ownerReferences") or []:
        if not o.get("uid"):
            errors.append('metadata.ownerReferences.uid: Invalid value: "": uid must not be empty')
    if errors:
        raise Reject(
            422,
            "Invalid",
            f"{kind}.{'batch' if kind == 'Job' else ''} {name!r} is invalid: " + "; ".join(errors),
            {"name": name, "kind": kind},
        )


class Admission:
    """Schema validation of every object received and Pod Security Admission per namespace.
    Mixed into ``FakeCluster``."""

    versions: tuple[str, ...]
    validated_objects: int
    namespace_labels: dict[str, dict[str, str]]

    def add_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """Label a namespace, e.g. with ``pod-security.kubernetes.io/enforce: restricted``: Pod
        Security Admission then checks every pod the Job controller creates there (a violating pod
        is refused, the Job stays without pods, as on a real cluster) and ``warn`` answers Job
        creations with a ``Warning`` header for a violating pod template."""
        self.namespace_labels[name] = dict(labels or {})

    def validate(self, obj: Mapping[str, Any]) -> None:
        """Strict schema validation against every configured Kubernetes version, plus semantics."""
        import kubernetes_validate

        for version in self.versions:
            try:
                kubernetes_validate.validate(dict(obj), version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = "/".join(str(p) for p in exc.path)
                raise Reject(
                    422,
                    "Invalid",
                    f"{obj.get('kind')} {obj.get('metadata', {}).get('name')!r} "
                    f"is invalid (schema {version}, at /{path}): {exc.message}",
                ) from None
            except Exception as exc:  # noqa: BLE001 - unknown kinds etc.
                raise Reject(422, "Invalid", f"cannot validate against schema {version}: {exc}") from None
        self.validated_objects += 1
        semantic_checks(obj)

    def _pod_security(self, namespace: str, mode: str, pod: Mapping[str, Any]) -> str:
        """Pod Security Admission for ``mode`` (enforce | warn) in a labelled namespace: the
        violations of the level the namespace sets (as one message), or "" if none or unlabelled."""
        level = self.namespace_labels.get(namespace, {}).get(f"pod-security.kubernetes.io/{mode}", "privileged")
        if level == "privileged":
            return ""
        problems = pod_security_violations(pod.get("spec") or {}, level, pod.get("metadata"))
        if not problems:
            return ""
        return f'violates PodSecurity "{level}:latest": ' + "; ".join(problems)
