"""A dataset mirror shared by pods (docs/cluster.md, "Caches that survive a pod"): several step or
warm worker pods mount one cache volume and sync the same ``s3://`` prefix into it at once.

What must hold, against the real SeaweedFS fixture: concurrent syncs from separate processes all
succeed, fetch each object once between them (a per-prefix file lock serialises them; the later one
finds the mirror complete), and leave an exact mirror -- every file byte for byte the object, the
ETag manifest naming the object's ETag, no ``*.part-*`` file. A file that is not what the manifest
says (truncated or emptied by a node crash after its rename, changed by hand) is fetched again: a
mirrored file is reused only when its ETag *and* size match the listing. A fresh ``*.part-*`` file
(another node's download in flight, where the volume's locks do not reach across nodes) is left
alone; an old one (an interrupted download) is removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from quicktune import storage
from quicktune.data import open_dataset
from quicktune.data.s3 import MANIFEST, mirror_dir

pytestmark = pytest.mark.servers

# One sync in its own process, as in a pod: imports first, then waits for the common start signal,
# so the syncs overlap however long the imports take.
CHILD = r"""
import json, os, sys, time
from pathlib import Path
from quicktune.data.s3 import sync_prefix
uri, cache, ready, go = sys.argv[1:5]
Path(ready).touch()
while not os.path.exists(go):
    time.sleep(0.01)
root, etags, stats = sync_prefix(uri, Path(cache), workers=4)
print(json.dumps({"root": str(root), "stats": stats, "n": len(etags)}))
"""


@pytest.fixture
def s3_digits(s3_env, tiny_image_folder):
    """The tiny dataset (300 PNGs) under a fresh prefix of bucket 'datasets'."""
    s3_env.create_bucket("datasets")
    prefix = f"s3://datasets/shared-{os.urandom(4).hex()}"

    def upload(path: Path) -> None:
        storage.write_bytes(f"{prefix}/{path.relative_to(tiny_image_folder).as_posix()}", path.read_bytes())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, sorted(tiny_image_folder.rglob("*.png"))))
    return prefix


def concurrent_syncs(uris: list[str], cache: Path, tmp_path: Path) -> list[dict]:
    """Run one sync per uri in its own process, all released at the same moment."""
    go = tmp_path / "go"
    procs, readies = [], []
    for i, uri in enumerate(uris):
        ready = tmp_path / f"ready-{i}"
        readies.append(ready)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", CHILD, uri, str(cache), str(ready), str(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=dict(os.environ),
            )
        )
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in readies):
        assert time.monotonic() < deadline, "the sync processes did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    go.touch()
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def assert_exact_mirror(root: Path, uri: str, local: Path) -> None:
    """Every object mirrored byte for byte, the manifest naming each object's ETag, nothing else."""
    bucket, prefix = storage.parse_s3_uri(uri)
    listed = {o["Key"][len(prefix) + 1 :]: o["ETag"].strip('"') for o in storage.list_s3_objects(uri + "/")}
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert files == set(listed)
    for rel in listed:
        assert (root / rel).read_bytes() == (local / rel).read_bytes(), rel
    assert json.loads((root / MANIFEST).read_text()) == listed
    assert not list(root.rglob("*.part-*"))


def test_two_concurrent_syncs_into_one_cache_fetch_each_object_once_and_leave_an_exact_mirror(
    s3_digits, tiny_image_folder, tmp_path
):
    cache = tmp_path / "shared-cache"
    a, b = concurrent_syncs([s3_digits, s3_digits], cache, tmp_path)
    assert a["root"] == b["root"] and a["n"] == b["n"] == 300
    assert a["stats"]["downloaded"] + b["stats"]["downloaded"] == 300, (a["stats"], b["stats"])
    assert sorted([a["stats"]["reused"], b["stats"]["reused"]]) == [0, 300]
    assert_exact_mirror(Path(a["root"]), s3_digits, tiny_image_folder)
    ds = open_dataset(s3_digits, cache_dir=cache)  # a third pod, later: nothing left to fetch
    assert ds.sync_stats["downloaded"] == 0 and ds.sync_stats["reused"] == 300


def test_concurrent_syncs_of_two_datasets_share_one_cache(s3_digits, s3_env, tiny_image_folder, tmp_path):
    other = s3_digits.replace("/shared-", "/other-")
    for path in sorted(tiny_image_folder.rglob("*.png"))[:40]:
        storage.write_bytes(f"{other}/{path.relative_to(tiny_image_folder).as_posix()}", path.read_bytes())
    cache = tmp_path / "shared-cache"
    first, second = concurrent_syncs([s3_digits, other, s3_digits], cache, tmp_path)[:2]
    assert first["n"] == 300 and second["n"] == 40 and first["root"] != second["root"]
    assert_exact_mirror(Path(first["root"]), s3_digits, tiny_image_folder)
    assert_exact_mirror(Path(second["root"]), other, tiny_image_folder)


@pytest.mark.parametrize("damage", ["truncate", "empty", "grow"])
def test_a_mirrored_file_whose_size_is_wrong_is_fetched_again(damage, s3_digits, tiny_image_folder, tmp_path):
    """The manifest still names the right ETag (a node crashed after the rename, before the data
    reached the disk; someone edited the file): the size gives it away, the file is fetched again."""
    cache = tmp_path / "cache"
    ds = open_dataset(s3_digits, cache_dir=cache)
    root = mirror_dir(s3_digits, cache)
    victim = root / ds.paths[7]
    data = victim.read_bytes()
    victim.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "grow": data + b"\0"}[damage])
    again = open_dataset(s3_digits, cache_dir=cache)
    assert again.sync_stats["downloaded"] == 1 and again.sync_stats["reused"] == 299
    assert victim.read_bytes() == data
    assert_exact_mirror(root, s3_digits, tiny_image_folder)


def test_a_fresh_part_file_is_left_alone_and_an_old_one_removed(s3_digits, tiny_image_folder, tmp_path):
    """Where the volume's file locks do not reach other nodes, another pod may be writing a
    ``*.part-*`` file while this one syncs: only parts too old to be in flight are cleaned up."""
    cache = tmp_path / "cache"
    ds = open_dataset(s3_digits, cache_dir=cache)
    root = mirror_dir(s3_digits, cache)
    target = root / ds.paths[3]
    fresh = target.with_name(target.name + ".part-0000fresh")
    old = target.with_name(target.name + ".part-00000old")
    fresh.write_bytes(b"half a download")
    old.write_bytes(b"left by a killed pod")
    long_ago = time.time() - 2 * 3600
    os.utime(old, (long_ago, long_ago))
    again = open_dataset(s3_digits, cache_dir=cache)
    assert again.sync_stats["downloaded"] == 0
    assert fresh.exists() and not old.exists()
    assert target.read_bytes() == (tiny_image_folder / ds.paths[3]).read_bytes()  # never used as data
