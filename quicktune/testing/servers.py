"""Real S3 (SeaweedFS) and MLflow servers on loopback ports, as context managers.

Why real servers: S3 and MLflow behaviour (auth, ETags, multipart, 403s, artifact proxying) is
what breaks in production, and fakes hide exactly that. Both servers start in a few seconds here
and are shared per test session (see ``tests/conftest.py``).

    with SeaweedS3(tmp_path / "s3", "key", "secret") as s3:
        s3.create_bucket("data")
        with MlflowServer(tmp_path / "mlflow", s3) as mlf:
            mlflow.set_tracking_uri(mlf.tracking_uri)

``SeaweedS3`` runs ``weed server -s3`` (master, volume, filer and S3 gateway in one process) with
an identity file, so requests must be signed with the given key and secret. ``MlflowServer`` runs
``mlflow server`` with a sqlite backend and proxies artifacts to ``s3://BUCKET/artifacts``.
Logs stay in the work folder; if a server does not come up, ``ServerError`` carries the tail of
its log.
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["SeaweedS3", "MlflowServer", "ServerError", "free_port_pair"]


class ServerError(RuntimeError):
    """A test server failed to start (the message includes its log tail). ``exited_at_once``: the
    process died while starting, the sign of a port race worth a retry on other ports."""

    def __init__(self, message: str, exited_at_once: bool = False) -> None:
        super().__init__(message)
        self.exited_at_once = exited_at_once


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(n: int = 1, offset: int = 10000, low: int = 20000, high: int = 29999) -> list[int]:
    """``n`` distinct ports P that are free together with P + ``offset`` (SeaweedFS's gRPC ports)."""
    rng = random.Random()
    chosen: list[int] = []
    for _ in range(5000):
        p = rng.randint(low, high)
        if p in chosen or any(abs(p - c) == offset for c in chosen):
            continue
        if _port_free(p) and (offset == 0 or _port_free(p + offset)):
            chosen.append(p)
            if len(chosen) == n:
                return chosen
    raise ServerError(f"could not find {n} free loopback ports (with +{offset} free too)")


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(lines[-n:])


def _executable(name: str) -> str:
    """Prefer the tool installed next to this Python (the venv), then PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise ServerError(f"{name!r} not found next to {sys.executable} or on PATH")
    return found


class _Process:
    """A child process in its own session, with log capture and a polite stop."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = Path(workdir)
        self.log_path = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, cmd: list[str], env: Mapping[str, str] | None = None) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env else None,
                start_new_session=True,
            )
        finally:
            log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def fail(self, why: str, exited_at_once: bool = False) -> ServerError:
        code = None if self.proc is None else self.proc.poll()
        state = "still running" if code is None else f"exited with code {code}"
        return ServerError(
            f"{self.name} {why} ({state}); log {self.log_path}:\n{_tail(self.log_path)}", exited_at_once=exited_at_once
        )

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)


class _RetryingServer:
    """Starts a server process on fresh free ports, retrying when the process dies at once: a port
    race with another test session that picked the same ports. Subclasses set ``_process`` and
    implement ``_start_once``."""

    _process: _Process

    def _start_once(self) -> None:
        raise NotImplementedError

    def start(self, attempts: int = 3) -> None:
        for attempt in range(attempts):
            try:
                self._start_once()
                return
            except ServerError as exc:
                # A server that came up but never got ready, or cannot store data, would fail
                # the same way on other ports.
                if not exc.exited_at_once or attempt == attempts - 1:
                    raise


class SeaweedS3(_RetryingServer):
    """SeaweedFS (``weed server -s3``) with S3 authentication on, for tests and demos.

    ``min_free_space`` is SeaweedFS's ``-volume.minFreeSpace``: below that much free disk every
    volume turns read-only and writes fail (a number <= 100 is a percentage, else a size such as
    ``"64MiB"``). The default is small so that a nearly full disk still serves test-sized data.

    Attributes once started: ``endpoint_url``, ``access_key``, ``secret_key``, ``env``
    (the AWS_* / MLFLOW_S3_ENDPOINT_URL variables a client process needs).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        access_key: str = "quicktune",
        secret_key: str = "quicktune-secret",
        start_timeout: float = 90.0,
        extra_identities: list[dict[str, Any]] | None = None,
        min_free_space: str = "64MiB",
    ) -> None:
        self.workdir = Path(workdir)
        self.min_free_space = min_free_space
        # more SeaweedFS identities, e.g. a reader limited to one bucket:
        # {"name": "r", "credentials": [{"accessKey": K, "secretKey": S}], "actions": ["Read:pub", "List:pub"]}
        self.extra_identities = list(extra_identities or [])
        self.access_key = access_key
        self.secret_key = secret_key
        self.start_timeout = start_timeout
        self._process = _Process("seaweedfs", self.workdir)
        self.endpoint_url = ""
        self.ports: dict[str, int] = {}

    # --- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _start_once(self) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        },
                        *self.extra_identities,
                    ]
                }
            )
        )
        config.chmod(0o600)
        master, volume, filer, s3 = free_port_pair(4)
        self.ports = dict(master=master, volume=volume, filer=filer, s3=s3)
        # -logtostderr: glog's files would otherwise pile up in the system temp folder.
        cmd = [
            _executable("weed"),
            "-logtostderr",
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-filer",
            "-s3",
            "-iam=false",
            f"-s3.config={config}",
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-volume.preStopSeconds=1",
            # Capacity must not depend on the machine's free disk: by default the volume count
            # is free space / volume size, and each bucket (a collection) grows several volumes
            # on its first write, so on a machine with ~12 GiB free a later bucket got "No
            # writable volumes" (HTTP 500). Volumes are sparse files; test data is small.
            "-volume.max=256",
            "-master.volumeSizeLimitMB=64",
            # Nor on the disk's size: by default a volume server turns read-only below 1 % free
            # (2.5 GiB of a 252 GiB disk), and every write fails with HTTP 500 InternalError
            # (a CI run that started with 2.8 GiB free saw "volume is read only" five minutes in,
            # and every later S3 test failed). ``weed mini`` has no flag for it: ``weed server``.
            f"-volume.minFreeSpace={self.min_free_space}",
        ]
        for name, port in self.ports.items():
            cmd += [f"-{name}.port={port}", f"-{name}.port.grpc={port + 10000}"]
        self.endpoint_url = f"http://127.0.0.1:{s3}"
        self._process.start(cmd)
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Ready means a write goes through, not only that the gateway answers: a volume server
        that registered no writable capacity (read-only for lack of disk, or not yet joined) lets
        ``ListBuckets`` succeed and fails every ``PutObject`` with HTTP 500."""
        from botocore import exceptions as bx

        deadline = time.monotonic() + self.start_timeout
        # A server with no writable volume holds a write past a 30 s client timeout (seen here).
        client = self.client(max_attempts=1, read_timeout=5)
        last: Exception | None = None
        answered = False
        while time.monotonic() < deadline:
            if not self._process.alive():
                raise self._process.fail("did not start", exited_at_once=True)
            try:
                client.list_buckets()
                answered = True
                self._write_probe(client)
                return
            except (bx.BotoCoreError, bx.ClientError) as exc:
                last = exc
                time.sleep(0.3)
        self.stop()
        if answered:
            free = shutil.disk_usage(self.workdir).free / 2**30
            raise self._process.fail(
                f"answered but could not store an object within {self.start_timeout:.0f} s (last error: {last}); "
                f"{free:.2f} GiB free on the disk of {self.workdir} (volumes turn read-only below "
                f"min_free_space={self.min_free_space})"
            )
        raise self._process.fail(f"was not ready within {self.start_timeout:.0f} s (last error: {last})")

    def _write_probe(self, client: Any) -> None:
        bucket = "quicktune-ready-probe"
        self.create_bucket(bucket, client)  # may be left by an earlier probe whose write failed
        client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
        client.delete_object(Bucket=bucket, Key="probe")
        client.delete_bucket(Bucket=bucket)

    def stop(self) -> None:
        # The volume server has flushed and stopped ~1 s after SIGTERM; the filer then waits ~15 s
        # on its open connections before exiting. Test data: no need to wait for that.
        self._process.stop(timeout=4)
        if self._process.alive():
            return
        # Only this server's sockets (named after its ports): other SeaweedFS servers, e.g. in a
        # parallel test session, keep theirs.
        ours = {str(p) for p in self.ports.values()} | {str(p + 10000) for p in self.ports.values()}
        for sock in glob.glob(os.path.join(tempfile.gettempdir(), "seaweedfs-*.sock")):
            match = re.fullmatch(r"seaweedfs-[a-z0-9-]+?-(\d+)\.sock", os.path.basename(sock))
            if match and match.group(1) in ours:
                try:
                    os.unlink(sock)
                except OSError:
                    pass

    # --- clients --------------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point an S3 client (boto3, MLflow) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
        }

    def client(
        self,
        access_key: str | None = None,
        secret_key: str | None = None,
        max_attempts: int = 3,
        read_timeout: float = 30.0,
    ) -> Any:
        """A boto3 S3 client for this server (path-style, SigV4)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=3,
                read_timeout=read_timeout,
            ),
        )

    def create_bucket(self, name: str, client: Any = None) -> str:
        """Create ``name`` if it does not exist yet; returns ``s3://name``."""
        from botocore import exceptions as bx

        client = client or self.client()
        try:
            client.create_bucket(Bucket=name)
        except bx.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        return f"s3://{name}"


class MlflowServer(_RetryingServer):
    """``mlflow server`` with a sqlite store and (optionally) S3 artifacts on a ``SeaweedS3``."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        s3: SeaweedS3 | None = None,
        bucket: str = "mlflow",
        start_timeout: float = 180.0,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.s3 = s3
        self.bucket = bucket
        self.start_timeout = start_timeout
        self.extra_env = dict(extra_env or {})
        self._process = _Process("mlflow", self.workdir)
        self.port = 0
        self.tracking_uri = ""

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        """Environment for a client process: tracking URI plus the S3 variables."""
        env = {"MLFLOW_TRACKING_URI": self.tracking_uri}
        if self.s3 is not None:
            env.update(self.s3.env)
        return env

    def _start_once(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.port,) = free_port_pair(1, offset=0)
        env = dict(os.environ)
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        cmd = [
            _executable("mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            f"sqlite:///{self.workdir / 'mlflow.db'}",
            "--workers",
            "1",
        ]
        if self.s3 is not None:
            self.s3.create_bucket(self.bucket)
            env.update(self.s3.env)
            cmd += ["--artifacts-destination", f"s3://{self.bucket}/artifacts"]
        else:
            cmd += ["--artifacts-destination", str(self.workdir / "artifacts")]
        env.update(self.extra_env)
        self.tracking_uri = f"http://127.0.0.1:{self.port}"
        self._process.start(cmd, env)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self._process.alive():
                raise self._process.fail("did not start", exited_at_once=True)
            try:
                with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise self._process.fail(f"did not answer GET /health within {self.start_timeout:.0f} s")

    def stop(self) -> None:
        self._process.stop(timeout=20)
