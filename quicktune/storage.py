"""Read and write small files on a local path or an ``s3://bucket/key`` URI, with clear errors.

Why one module: checkpoints, datasets and model weights all live either on local disk (CPU
here, a PVC in a pod) or in S3 (SeaweedFS here, any S3 in production). Callers should not care
which; they get the same functions and the same error types, each naming the URI at fault.

S3 access uses boto3 with the standard AWS configuration chain (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws/...``). The endpoint comes from, in order,
``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or ``MLFLOW_S3_ENDPOINT_URL``; addressing is
path-style (what SeaweedFS, MinIO and Ceph expect). Retries: ``AWS_MAX_ATTEMPTS`` (default 4)
with short connect timeouts, so an unreachable endpoint fails in seconds with a clear message.
Secrets are never logged or put into error messages.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeGuard

__all__ = [
    "StorageError",
    "NotFoundError",
    "NoSuchBucketError",
    "AccessDeniedError",
    "EndpointError",
    "CredentialsError",
    "is_s3",
    "parse_s3_uri",
    "s3_client",
    "s3_endpoint_url",
    "translate_s3_error",
    "read_bytes",
    "write_bytes",
    "list_uris",
    "exists",
    "stat",
    "delete",
    "download_file",
    "upload_file",
    "join",
    "cache_dir",
    "list_s3_objects",
]


class StorageError(OSError):
    """A file could not be read, written, listed or deleted; the message names the URI."""


class NotFoundError(StorageError, FileNotFoundError):
    """The file (or S3 object) does not exist."""


class NoSuchBucketError(NotFoundError):
    """The S3 bucket named in the URI does not exist."""


class AccessDeniedError(StorageError, PermissionError):
    """The credentials were rejected (wrong secret, unknown key, missing permission)."""


class EndpointError(StorageError, ConnectionError):
    """The S3 endpoint could not be reached, even after retries."""


class CredentialsError(StorageError):
    """No S3 credentials were found in the environment or AWS config files."""


# --------------------------------------------------------------------------------------------
# URIs
# --------------------------------------------------------------------------------------------
def is_s3(uri: str | os.PathLike[str]) -> TypeGuard[str]:
    """An ``s3://`` URI (a str); a type guard, so the S3 branches below know they hold a str."""
    return isinstance(uri, str) and uri.startswith("s3://")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``."""
    if not is_s3(uri):
        raise StorageError(f"not an s3:// URI: {uri!r}")
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri!r}: no bucket name after s3://")
    return bucket, key


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URI (always with ``/`` for S3).

    The result stays below ``base``: a part that is absolute (locally ``Path(base, "/x")`` is
    ``/x``) or holds a ``..`` segment (some S3 gateways normalise it away) raises StorageError, as
    does a NUL. Parts may name several levels (``"results/x.json"``).
    """
    for p in parts:
        segs = str(p).replace("\\", "/").split("/")
        if "\0" in str(p) or ".." in segs or (not is_s3(base) and str(p).startswith(("/", "\\"))):
            raise StorageError(
                f"{ascii(str(p))[:120]}: a path part must stay below {base!r} (no absolute path, no '..')"
            )
    if is_s3(base):
        out = base.rstrip("/")
        for p in parts:
            out += "/" + p.strip("/")
        return out
    return str(Path(base, *parts))


# --------------------------------------------------------------------------------------------
# S3 client and error translation
# --------------------------------------------------------------------------------------------
_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def s3_endpoint_url() -> str | None:
    """The S3 endpoint from the environment, or None for AWS itself."""
    for var in _ENDPOINT_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return None


def s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client for the current environment (cached; boto3 clients are thread-safe).

    The cache key includes the endpoint and a hash of the credential variables, so a test or a
    long-lived process that changes credentials gets a fresh client.
    """
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url or s3_endpoint_url()
    env_key = tuple(
        os.environ.get(v, "")
        for v in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_DEFAULT_REGION",
            "AWS_REGION",
            "AWS_MAX_ATTEMPTS",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
        )
    )
    key = (endpoint, hashlib.sha256("\0".join(env_key).encode()).hexdigest())
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            config = Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", "4")), "mode": "standard"},
                connect_timeout=float(os.environ.get("QUICKTUNE_S3_CONNECT_TIMEOUT", "3")),
                read_timeout=float(os.environ.get("QUICKTUNE_S3_READ_TIMEOUT", "60")),
                max_pool_connections=32,
            )
            client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)
            _clients[key] = client
        return client


_DENIED_CODES = {
    "AccessDenied",
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "403",
    "Forbidden",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


def translate_s3_error(exc: BaseException, uri: str) -> StorageError:
    """Turn a botocore exception into a StorageError subclass whose message names ``uri``."""
    from botocore import exceptions as bx

    endpoint = s3_endpoint_url() or "AWS S3"
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return CredentialsError(
            f"{uri}: no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            f"(or AWS_PROFILE) for endpoint {endpoint}"
        )
    if isinstance(
        exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ReadTimeoutError | bx.ConnectionClosedError
    ):
        attempts = os.environ.get("AWS_MAX_ATTEMPTS", "4")
        return EndpointError(
            f"{uri}: cannot reach the S3 endpoint {endpoint} (tried {attempts} times): {exc}. "
            f"Check AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 / MLFLOW_S3_ENDPOINT_URL and that the server runs"
        )
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        bucket = parse_s3_uri(uri)[0] if is_s3(uri) else "?"
        if code == "NoSuchBucket":
            return NoSuchBucketError(f"{uri}: the bucket {bucket!r} does not exist at {endpoint}")
        if code in _DENIED_CODES or status == 403:
            return AccessDeniedError(
                f"{uri}: access denied by {endpoint} ({code or status}); check AWS_ACCESS_KEY_ID / "
                f"AWS_SECRET_ACCESS_KEY and the key's permissions on bucket {bucket!r}"
            )
        if code in _MISSING_CODES or status == 404:
            return NotFoundError(f"{uri}: no such object")
        return StorageError(f"{uri}: S3 error {code or status}: {err.get('Message', exc)}")
    if isinstance(exc, bx.BotoCoreError):
        return StorageError(f"{uri}: S3 error: {exc}")
    return StorageError(f"{uri}: {exc}")


def _s3_call(uri: str, fn, *args, **kwargs):
    from boto3 import exceptions as b3x
    from botocore import exceptions as bx

    try:
        return fn(*args, **kwargs)
    except (bx.BotoCoreError, bx.ClientError) as exc:
        raise translate_s3_error(exc, uri) from exc
    except b3x.Boto3Error as exc:  # s3transfer wraps the ClientError in a message
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, bx.BotoCoreError | bx.ClientError):
            raise translate_s3_error(cause, uri) from exc
        text = str(exc)
        for code in ("NoSuchBucket", *sorted(_DENIED_CODES)):
            if code in text:
                return_exc = bx.ClientError({"Error": {"Code": code, "Message": text}}, "transfer")
                raise translate_s3_error(return_exc, uri) from exc
        raise StorageError(f"{uri}: S3 transfer failed: {exc}") from exc


def _bucket_exists_or_raise(uri: str) -> None:
    """Distinguish 'no such key' from 'no such bucket' (HEAD requests cannot say which)."""
    bucket, _ = parse_s3_uri(uri)
    try:
        _s3_call(f"s3://{bucket}", s3_client().head_bucket, Bucket=bucket)
    except NoSuchBucketError:
        raise NoSuchBucketError(
            f"{uri}: the bucket {bucket!r} does not exist at {s3_endpoint_url() or 'AWS S3'}"
        ) from None
    except NotFoundError:  # HEAD has no body, so S3 cannot say NoSuchBucket
        raise NoSuchBucketError(
            f"{uri}: the bucket {bucket!r} does not exist at {s3_endpoint_url() or 'AWS S3'}"
        ) from None


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------
def read_bytes(uri: str | os.PathLike[str]) -> bytes:
    """The whole content of a local file or S3 object."""
    if is_s3(uri):
        bucket, key = parse_s3_uri(uri)
        resp = _s3_call(uri, s3_client().get_object, Bucket=bucket, Key=key)
        return _s3_call(uri, resp["Body"].read)
    path = Path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise StorageError(f"{path}: is a directory, not a file") from None
    except PermissionError:
        raise AccessDeniedError(f"{path}: permission denied") from None
    except OSError as exc:
        raise StorageError(f"{path}: cannot read: {exc}") from None


def write_bytes(uri: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data``; a reader never sees a half-written file.

    Local: write a temporary file in the same folder, fsync, then rename over the target.
    S3: a single PUT, which S3 makes visible atomically.
    """
    if is_s3(uri):
        bucket, key = parse_s3_uri(uri)
        if not key or key.endswith("/"):
            raise StorageError(f"{uri}: needs an object key, not a bucket or folder")
        _s3_call(uri, s3_client().put_object, Bucket=bucket, Key=key, Body=data)
        return
    path = Path(uri)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
    except PermissionError:
        raise AccessDeniedError(f"{path}: permission denied") from None
    except OSError as exc:
        raise StorageError(f"{path}: cannot write: {exc}") from None


def _iter_s3(prefix_uri: str) -> Iterator[dict[str, Any]]:
    bucket, prefix = parse_s3_uri(prefix_uri)
    paginator = s3_client().get_paginator("list_objects_v2")
    pages = paginator.paginate(Bucket=bucket, Prefix=prefix)
    from botocore import exceptions as bx

    try:
        for page in pages:
            yield from page.get("Contents", [])
    except (bx.BotoCoreError, bx.ClientError) as exc:
        raise translate_s3_error(exc, prefix_uri) from exc


def list_s3_objects(prefix_uri: str) -> list[dict[str, Any]]:
    """Raw ``list_objects_v2`` entries (Key, ETag, Size, LastModified) under an S3 prefix."""
    return list(_iter_s3(prefix_uri))


def list_uris(prefix: str | os.PathLike[str]) -> list[str]:
    """Every file under ``prefix``, sorted.

    S3: every object whose key starts with the prefix (give a trailing ``/`` to list a folder).
    Local: every file below the folder ``prefix``; or, when ``prefix`` is not a folder, every
    file in its parent folder (recursively) whose path starts with it. A missing folder lists
    nothing (as an empty S3 prefix does); temporary files from ``write_bytes`` are skipped.
    """
    if is_s3(prefix):
        bucket, _ = parse_s3_uri(prefix)
        return sorted(f"s3://{bucket}/{o['Key']}" for o in _iter_s3(str(prefix)))
    path = Path(prefix)
    if path.is_dir():
        files = (p for p in path.rglob("*") if p.is_file())
    elif path.parent.is_dir():
        files = (p for p in path.parent.rglob("*") if p.is_file() and str(p).startswith(str(path)))
    else:
        return []
    return sorted(str(p) for p in files if not (p.name.startswith(".") and p.name.endswith(".tmp")))


def exists(uri: str | os.PathLike[str]) -> bool:
    """Whether the file / object exists (a missing bucket raises NoSuchBucketError)."""
    if is_s3(uri):
        bucket, key = parse_s3_uri(uri)
        try:
            _s3_call(uri, s3_client().head_object, Bucket=bucket, Key=key)
            return True
        except NoSuchBucketError:
            raise
        except NotFoundError:
            _bucket_exists_or_raise(uri)
            return False
    return Path(uri).exists()


def stat(uri: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"size": bytes, "version": ETag (S3) or mtime in ns (local)}``; raises NotFoundError /
    NoSuchBucketError when absent."""
    if is_s3(uri):
        bucket, key = parse_s3_uri(uri)
        try:
            head = _s3_call(uri, s3_client().head_object, Bucket=bucket, Key=key)
        except NoSuchBucketError:
            raise
        except NotFoundError:
            _bucket_exists_or_raise(uri)
            raise
        return {"size": int(head["ContentLength"]), "version": head["ETag"].strip('"')}
    try:
        st = Path(uri).stat()
    except FileNotFoundError:
        raise NotFoundError(f"{uri}: no such file") from None
    return {"size": st.st_size, "version": str(st.st_mtime_ns)}


def delete(uri: str | os.PathLike[str]) -> None:
    """Delete a file / object; deleting something absent is not an error."""
    if is_s3(uri):
        bucket, key = parse_s3_uri(uri)
        _s3_call(uri, s3_client().delete_object, Bucket=bucket, Key=key)
        return
    try:
        Path(uri).unlink(missing_ok=True)
    except PermissionError:
        raise AccessDeniedError(f"{uri}: permission denied") from None
    except OSError as exc:
        raise StorageError(f"{uri}: cannot delete: {exc}") from None


def download_file(uri: str, dest: str | os.PathLike[str]) -> Path:
    """Copy ``uri`` to the local file ``dest`` (multipart for large S3 objects), atomically."""
    dest = Path(dest)
    if not is_s3(uri):
        write_bytes(dest, read_bytes(uri))
        return dest
    bucket, key = parse_s3_uri(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        _s3_call(uri, s3_client().download_file, bucket, key, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def upload_file(src: str | os.PathLike[str], uri: str) -> None:
    """Copy the local file ``src`` to ``uri`` (multipart for large files)."""
    if not Path(src).is_file():
        raise NotFoundError(f"{src}: no such file")
    if not is_s3(uri):
        write_bytes(uri, Path(src).read_bytes())
        return
    bucket, key = parse_s3_uri(uri)
    _s3_call(uri, s3_client().upload_file, str(src), bucket, key)


def cache_dir(kind: str) -> Path:
    """Where quicktune caches ``kind`` (``datasets``, ``weights``, ``meta``):
    ``$QUICKTUNE_CACHE/<kind>``, default ``~/.cache/quicktune/<kind>``."""
    base = os.environ.get("QUICKTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "quicktune")
    return Path(base) / kind
