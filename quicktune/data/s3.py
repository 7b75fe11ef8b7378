"""Mirror an ``s3://bucket/prefix`` dataset into a local cache, keyed by ETag.

Why a mirror: every finetuning step reads each image many times; reading from local disk is
what makes a step as fast as a hand-written loop. The mirror is exact (stale files are removed)
and cheap to refresh: one listing, then only objects whose ETag changed are fetched.

Layout: ``<cache>/s3/<endpoint-id>/<bucket>/<prefix>/...`` plus ``.quicktune-etags.json``
(relative path -> ETag of each complete local file). Downloads go to ``*.part-*`` files renamed
into place when complete, the ETag manifest is flushed about every second, and a file lock
serialises processes syncing the same prefix: an interrupted sync resumes where it stopped and
files already present with the right ETag are never fetched again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
import uuid
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from quicktune import storage
from quicktune.data.dataset import is_image_file
from quicktune.data.errors import DatasetError

MANIFEST = ".quicktune-etags.json"
LOCK = ".quicktune-sync.lock"


def _wanted(rel: str) -> bool:
    if not rel or rel.endswith("/") or any(p.startswith(".") for p in rel.split("/")):
        return False
    name = rel.rsplit("/", 1)[-1]
    return is_image_file(name) or rel == "labels.csv" or (rel.startswith("splits/") and rel.endswith(".txt")
                                                          and rel.count("/") == 1)


def mirror_dir(uri: str, cache_root: Path) -> Path:
    """The local folder that mirrors ``uri`` (endpoint-specific, so two servers never mix)."""
    bucket, prefix = storage.parse_s3_uri(uri)
    endpoint = storage.s3_endpoint_url() or "aws"
    eid = hashlib.sha1(endpoint.encode()).hexdigest()[:10]
    parts = [p for p in prefix.split("/") if p not in ("", ".", "..")]
    return Path(cache_root, "s3", eid, bucket, *parts)


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
    try:
        objects = storage.list_s3_objects(base_uri)
    except storage.StorageError as exc:
        raise DatasetError(f"{uri}: {exc}") from exc
    remote = {o["Key"][len(prefix):]: o["ETag"].strip('"') for o in objects if _wanted(o["Key"][len(prefix):])}
    if not remote:
        raise DatasetError(f"{uri}: dataset is empty: no images under {base_uri} "
                           f"({len(objects)} object(s) listed, none an image, labels.csv or split file)")
    root = mirror_dir(uri, cache_root)
    root.mkdir(parents=True, exist_ok=True)
    workers = workers or int(os.environ.get("QUICKTUNE_S3_WORKERS", "16"))
    with open(root / LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            stats = _sync_locked(base_uri, bucket, prefix, root, remote, workers)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    stats["seconds"] = round(time.monotonic() - t0, 3)
    return root, remote, stats


def _sync_locked(base_uri: str, bucket: str, prefix: str, root: Path, remote: dict[str, str],
                 workers: int) -> dict[str, Any]:
    manifest_path = root / MANIFEST
    try:
        manifest: dict[str, str] = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    for part in root.rglob("*.part-*"):  # leftovers of an interrupted sync
        part.unlink(missing_ok=True)
    removed = 0
    for rel in sorted(set(manifest) - set(remote)):
        (root / rel).unlink(missing_ok=True)
        manifest.pop(rel)
        removed += 1
    todo = [rel for rel, etag in sorted(remote.items())
            if manifest.get(rel) != etag or not (root / rel).is_file()]
    stats: dict[str, Any] = {"listed": len(remote), "downloaded": 0, "reused": len(remote) - len(todo),
                             "removed": removed, "bytes": 0}
    if not todo:
        if removed:
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
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.part-{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
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
