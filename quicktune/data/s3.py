"""Mirror an ``s3://bucket/prefix`` dataset into a local cache, keyed by ETag.

Why a mirror: every finetuning step reads each image many times; reading from local disk is
what makes a step as fast as a hand-written loop. The mirror is exact (stale files are removed)
and cheap to refresh: one listing, then only objects whose ETag changed are fetched.

Layout: ``<cache>/s3/<endpoint-id>/<bucket>/<prefix>/...`` plus ``.quicktune-etags.json``
(relative path -> ETag of each complete local file). Downloads go to ``*.part-*`` files renamed
into place when complete, the ETag manifest is flushed about every second, and a file lock
serialises processes syncing the same prefix: an interrupted sync resumes where it stopped and
files already present with the right ETag and size are never fetched again.

Shared caches (one volume mounted by many pods, docs/cluster.md "Caches that survive a pod"): a
file is only ever complete or absent under its own name (rename), and it is reused only when the
manifest names the listed ETag *and* its size is the listed size -- a file cut short by a node crash
after its rename, or changed by hand, is fetched again. Where the volume's locks do not reach other
nodes, two syncs may run at once: they may fetch a file twice, never expose a partial one, and a
sync removes only ``*.part-*`` files older than ``STALE_PART_SECONDS`` (never another pod's
download in flight).

Keys are names chosen by whoever can write the bucket, so they are confined
(``quicktune.data.paths``): AWS S3 keeps ``//``, ``..`` and backslashes in keys, and
``prefix//abs/x.png`` would otherwise become ``/abs/x.png`` - a write, and later a delete, outside
the cache. A key that would be mirrored but is not a clean relative path under the prefix is
refused with ``UnsafePathError`` naming the key in escaped form; nothing is written or deleted
outside the mirror folder, not even for a tampered ETag manifest or a symlink planted in the cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
import threading
import time
import uuid
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from quicktune import storage
from quicktune.data.errors import DatasetError, UnsafePathError
from quicktune.data.images import is_image_file
from quicktune.data.paths import confined, path_problem, safe_form

MANIFEST = ".quicktune-etags.json"
LOCK = ".quicktune-sync.lock"
#: a ``*.part-*`` file older than this is a leftover of an interrupted download (one object is
#: written in a single call, seconds at most), younger ones may be another node's download in flight
STALE_PART_SECONDS = 600.0


def _wanted(rel: str) -> bool:
    if not rel or rel.endswith("/") or any(p.startswith(".") for p in rel.split("/")):
        return False
    name = rel.rsplit("/", 1)[-1]
    return (
        is_image_file(name)
        or rel == "labels.csv"
        or (rel.startswith("splits/") and rel.endswith(".txt") and rel.count("/") == 1)
    )


def _looks_wanted(rel: str) -> bool:
    """Whether the key's last segment names something the mirror would fetch (before the key
    itself is checked): an image, ``labels.csv`` or a ``.txt`` split file."""
    parts = rel.split("/")
    name = parts[-1]
    return bool(name) and (
        is_image_file(name)
        or name == "labels.csv"
        or (name.endswith(".txt") and len(parts) > 1 and parts[-2] == "splits")
    )


def remote_files(objects: list[dict[str, Any]], prefix: str, base_uri: str) -> dict[str, str]:
    """``{relative path: ETag}`` of the listed objects the mirror keeps.

    Skipped: folder markers, hidden files (a segment starting with ``.``), anything that is not an
    image, ``labels.csv`` or ``splits/*.txt``. Refused (``UnsafePathError``): a key that would be
    kept but is not a clean relative path below ``prefix`` (leading ``/``, ``//``, ``.``/``..``
    segments, backslash, control characters), and a key that is both a file and a folder.
    """
    out: dict[str, str] = {}
    for obj in objects:
        key = str(obj["Key"])
        if not key.startswith(prefix):
            continue
        rel = key[len(prefix) :]
        if not rel or rel.endswith("/"):
            continue  # the prefix itself, or a folder marker
        why = path_problem(rel)
        if why is None:
            if _wanted(rel):
                out[rel] = str(obj["ETag"]).strip('"')
            continue
        if _looks_wanted(rel) and not any(p.startswith(".") and p not in (".", "..") for p in rel.split("/")):
            raise UnsafePathError(
                f"{base_uri}: object key {safe_form(key)} cannot be mirrored: below the prefix it {why}; "
                f"rename the object (keys map one-to-one to files of the local mirror, which must stay "
                f"inside its cache folder)"
            )
    folders = {rel.rsplit("/", 1)[0] for rel in out if "/" in rel}
    folders |= {f.rsplit("/", i)[0] for f in list(folders) for i in range(1, f.count("/") + 1)}
    clash = sorted(folders & set(out))
    if clash:
        raise UnsafePathError(
            f"{base_uri}: object key {safe_form(prefix + clash[0])} is also a folder of other "
            f"keys; a local mirror cannot hold both"
        )
    return out


def mirror_dir(uri: str, cache_root: Path) -> Path:
    """The local folder that mirrors ``uri`` (endpoint-specific, so two servers never mix).

    The bucket and prefix must be clean path segments (no ``.``/``..``, ``//``, backslash):
    two spellings of one prefix would otherwise share - and prune - one mirror.
    """
    bucket, prefix = storage.parse_s3_uri(uri)
    endpoint = storage.s3_endpoint_url() or "aws"
    eid = hashlib.sha1(endpoint.encode()).hexdigest()[:10]
    prefix = prefix[:-1] if prefix.endswith("/") else prefix
    for what, value in (("bucket name", bucket), ("prefix", prefix)):
        if value or what == "bucket name":
            why = path_problem(value)
            if why is not None:
                raise UnsafePathError(f"{safe_form(uri)}: the {what} {why}; use a clean s3://bucket/prefix")
    base = Path(cache_root, "s3", eid)
    return confined(base, f"{bucket}/{prefix}" if prefix else bucket, what="S3 location")


def _write_manifest(path: Path, manifest: dict[str, str]) -> None:
    storage.write_bytes(path, json.dumps(manifest, sort_keys=True).encode())


def sync_prefix(uri: str, cache_root: Path, workers: int | None = None) -> tuple[Path, dict[str, str], dict[str, Any]]:
    """Bring the local mirror of ``uri`` up to date.

    Returns ``(local_root, {relative path: ETag}, stats)`` where stats has ``listed``,
    ``downloaded``, ``reused``, ``removed``, ``bytes`` and ``seconds``.
    """
    t0 = time.monotonic()
    bucket, prefix = storage.parse_s3_uri(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    base_uri = f"s3://{bucket}/{prefix}"
    root = mirror_dir(uri, cache_root)  # refuses an unclean bucket/prefix before any request
    try:
        objects = storage.list_s3_objects(base_uri)
    except storage.StorageError as exc:
        raise DatasetError(f"{uri}: {exc}") from exc
    remote = remote_files(objects, prefix, base_uri)
    sizes = {rel: int(o["Size"]) for o in objects if (rel := str(o["Key"])[len(prefix) :]) in remote and "Size" in o}
    if not remote:
        raise DatasetError(
            f"{uri}: dataset is empty: no images under {base_uri} "
            f"({len(objects)} object(s) listed, none an image, labels.csv or split file)"
        )
    root.mkdir(parents=True, exist_ok=True)
    workers = workers or int(os.environ.get("QUICKTUNE_S3_WORKERS", "16"))
    with open(root / LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            stats = _sync_locked(base_uri, bucket, prefix, root, remote, workers, sizes)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    stats["seconds"] = round(time.monotonic() - t0, 3)
    return root, remote, stats


def _is_current(path: Path, size: int | None) -> bool:
    """Whether ``path`` is a regular file of ``size`` bytes (any size when the listing gave none)."""
    try:
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (size is None or st.st_size == size)


def _remove_stale_parts(root: Path) -> None:
    """Remove the ``*.part-*`` leftovers of interrupted downloads (module docstring: not the fresh ones)."""
    cutoff = time.time() - STALE_PART_SECONDS
    for part in root.rglob("*.part-*"):  # rglob stays off symlinks
        try:
            if part.lstat().st_mtime < cutoff:
                part.unlink(missing_ok=True)
        except OSError:
            pass  # gone in between (another sync cleaned it up)


def _sync_locked(
    base_uri: str,
    bucket: str,
    prefix: str,
    root: Path,
    remote: dict[str, str],
    workers: int,
    sizes: dict[str, int] | None = None,
) -> dict[str, Any]:
    manifest_path = root / MANIFEST
    try:
        manifest: dict[str, str] = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    if not isinstance(manifest, dict):
        manifest = {}
    sizes = sizes or {}
    _remove_stale_parts(root)
    removed = 0
    pruned = set(manifest) - set(remote)
    for rel in sorted(pruned):
        manifest.pop(rel)
        try:  # a manifest written by an older version (or tampered with) may name any path
            stale = confined(root, rel, resolve=True)
        except UnsafePathError:
            continue
        stale.unlink(missing_ok=True)
        removed += 1
    todo = [
        rel
        for rel, etag in sorted(remote.items())
        if manifest.get(rel) != etag or not _is_current(confined(root, rel, resolve=True), sizes.get(rel))
    ]
    stats: dict[str, Any] = {
        "listed": len(remote),
        "downloaded": 0,
        "reused": len(remote) - len(todo),
        "removed": removed,
        "bytes": 0,
    }
    if not todo:
        if pruned:
            _write_manifest(manifest_path, manifest)
        return stats
    client = storage.s3_client()
    lock = threading.Lock()

    def fetch(rel: str) -> tuple[str, str, int]:
        key = prefix + rel
        obj_uri = f"s3://{bucket}/{key}"
        from botocore import exceptions as bx

        try:
            resp = client.get_object(Bucket=bucket, Key=key)
            data = resp["Body"].read()
        except (bx.BotoCoreError, bx.ClientError) as exc:
            raise storage.translate_s3_error(exc, obj_uri) from exc
        dest = confined(root, rel, resolve=True, what="object key")  # remote_files checked it; links too
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.part-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return rel, resp.get("ETag", remote[rel]).strip('"'), len(data)

    last_flush = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="qt-s3") as pool:
            futures = {pool.submit(fetch, rel) for rel in todo}
            pending = futures
            while pending:
                done, pending = wait(pending, timeout=1.0, return_when=FIRST_EXCEPTION)
                failed: BaseException | None = None
                for fut in done:  # record every finished download before reporting a failure
                    exc = fut.exception()
                    if exc is not None:
                        failed = failed or exc
                        continue
                    rel, etag, size = fut.result()
                    with lock:
                        manifest[rel] = etag
                        stats["downloaded"] += 1
                        stats["bytes"] += size
                if failed is not None:
                    for other in pending:
                        other.cancel()
                    if isinstance(failed, storage.StorageError):
                        raise DatasetError(f"{base_uri}: {failed}") from failed
                    raise failed
                if time.monotonic() - last_flush > 1.0:
                    _write_manifest(manifest_path, manifest)
                    last_flush = time.monotonic()
    finally:
        _write_manifest(manifest_path, manifest)
    return stats
