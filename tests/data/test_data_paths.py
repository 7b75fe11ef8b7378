"""Path confinement of the data layer (issue 12, defect 6) and the dataset fingerprint (defect 5).

Names chosen by others - S3 keys, ``labels.csv`` entries - must never make quicktune read, write or
delete outside the folder they belong to. ``confined`` is fuzzed with Hypothesis (arbitrary strings,
symlinks inside and outside the root), and so is the S3 key -> file mapping. The S3 sync is run
against an in-memory S3 stand-in (the listing of real AWS S3 keeps ``//`` and ``..`` in keys; the
test server may normalise them), so these tests need no server.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from PIL import Image

from quicktune import storage
from quicktune.data import open_dataset
from quicktune.data.errors import InvalidDatasetError, UnsafePathError
from quicktune.data.paths import canonical_uri, clean_relpath, confined, is_inside

SEGMENTS = [
    "a",
    "b.png",
    ".",
    "..",
    "",
    "link_out",
    "link_in",
    "link_dotdot",
    "...",
    ". .",
    "\\",
    "..\\..",
    "\x00",
    "\n",
    "é",
    "C:",
    "~",
    "$(HOME)",
    "a" * 300,
]
rel_strings = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=8).map("/".join),
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=8).map(lambda p: "/" + "/".join(p)),
)


@pytest.fixture(scope="module")
def jail(tmp_path_factory) -> Path:
    """root/ with symlinks pointing inside (link_in), outside (link_out) and to root/.. (link_dotdot)."""
    base = tmp_path_factory.mktemp("jail")
    root, outside = base / "root", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "link_in").symlink_to(root / "sub")
    (root / "link_out").symlink_to(outside)
    (root / "link_dotdot").symlink_to("..")
    return root


def _lexically_inside(path: Path, root: Path) -> bool:
    norm = os.path.normpath(path)
    return norm.startswith(str(root) + os.sep)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rel=rel_strings)
@example(rel="/abs/x.png")  # what 'prefix//abs/x.png' leaves after the prefix
@example(rel="../../etc/passwd")
@example(rel="link_out/x.png")
@example(rel="a/../../x")
def test_confined_is_inside_root_or_an_error(jail, rel):
    try:
        lexical = confined(jail, rel)
    except UnsafePathError as exc:
        assert "\x00" not in str(exc) and "\n" not in str(exc)  # escaped form only
    else:
        assert _lexically_inside(lexical, jail)
        assert lexical == jail / rel  # clean names are taken as they are (one-to-one)
    try:
        real = confined(jail, rel, resolve=True)
    except UnsafePathError:
        pass
    else:
        assert is_inside(real, jail) and _lexically_inside(real, jail)
        assert os.path.realpath(real).startswith(os.path.realpath(jail) + os.sep)


def test_confined_refuses_each_kind_of_escape(jail):
    for rel, why in [
        ("/abs/x.png", "absolute"),
        ("../x.png", "'..'"),
        ("a//b.png", "empty path segment"),
        ("a/./b.png", "'.'"),
        ("a\\..\\b.png", "backslash"),
        ("a\x00.png", "control character"),
        ("", "empty"),
        ("a/", "empty path segment"),
    ]:
        with pytest.raises(UnsafePathError, match=why):
            clean_relpath(rel)
    assert confined(jail, "link_out/x.png") == jail / "link_out" / "x.png"  # lexically fine ...
    with pytest.raises(UnsafePathError, match="symbolic link"):
        confined(jail, "link_out/x.png", resolve=True)  # ... but it leads outside
    with pytest.raises(UnsafePathError, match="symbolic link"):
        confined(jail, "link_dotdot/x.png", resolve=True)
    assert confined(jail, "link_in/x.png", resolve=True) == jail / "link_in" / "x.png"


# --------------------------------------------------------------------------------------------
# S3 mirror
# --------------------------------------------------------------------------------------------
class FakeS3:
    """Just enough of an S3 client for ``sync_prefix``: listing and get_object from a dict."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects

    def listing(self, prefix_uri: str) -> list[dict]:
        _, prefix = storage.parse_s3_uri(prefix_uri)
        return [
            {"Key": k, "ETag": f'"{abs(hash(v)) % 10**8}"', "Size": len(v)}
            for k, v in sorted(self.objects.items())
            if k.startswith(prefix)
        ]

    def get_object(self, Bucket: str, Key: str) -> dict:  # noqa: N803 - boto3's names
        import io

        data = self.objects[Key]
        return {"Body": io.BytesIO(data), "ETag": f'"{abs(hash(data)) % 10**8}"'}


@pytest.fixture
def fake_s3(monkeypatch):
    s3 = FakeS3({})
    monkeypatch.setattr(storage, "list_s3_objects", s3.listing)
    monkeypatch.setattr(storage, "s3_client", lambda *a, **k: s3)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    return s3


def _png_bytes(value: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _dataset(s3: FakeS3, prefix: str = "data") -> None:
    for i in range(3):
        s3.objects[f"{prefix}/cat/{i}.png"] = _png_bytes(10 + i)
        s3.objects[f"{prefix}/dog/{i}.png"] = _png_bytes(200 + i)


def test_s3_key_with_double_slash_cannot_write_outside_the_cache(fake_s3, tmp_path):
    _dataset(fake_s3)
    victim = tmp_path / "outside" / "x.png"
    # 'data//<absolute path>': rel '/tmp/.../outside/x.png', and cache_root / rel is that absolute path
    fake_s3.objects["data/" + str(victim)] = _png_bytes(1)
    with pytest.raises(
        UnsafePathError,
        match=r"object key 'data//.*x.png' cannot be mirrored: below the prefix "
        r"it is an absolute path",
    ) as err:
        open_dataset("s3://bucket/data", cache_dir=tmp_path / "cache")
    assert isinstance(err.value, InvalidDatasetError)
    assert not victim.exists() and not (tmp_path / "outside").exists()


@pytest.mark.parametrize(
    "key",
    [
        "data/../escape.png",
        "data/cat/../../escape.png",
        "data/cat\\..\\x.png",
        "data/cat/./x.png",
        "data/cat/x\x00.png",
    ],
)
def test_s3_keys_with_dot_segments_backslashes_or_nul_are_refused(fake_s3, tmp_path, key):
    _dataset(fake_s3)
    fake_s3.objects[key] = _png_bytes(1)
    with pytest.raises(UnsafePathError, match="cannot be mirrored") as err:
        open_dataset("s3://bucket/data", cache_dir=tmp_path / "cache")
    assert "\x00" not in str(err.value)
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "cache" / "escape.png").exists()


def test_s3_keys_that_are_never_mirrored_are_ignored_not_refused(fake_s3, tmp_path):
    _dataset(fake_s3)
    fake_s3.objects["data//README.md"] = b"x"  # not an image: never becomes a file
    fake_s3.objects["data/.git/../x.png"] = b"x"  # hidden: skipped like any hidden file
    fake_s3.objects["data/cat/"] = b""  # folder marker
    ds = open_dataset("s3://bucket/data", cache_dir=tmp_path / "cache")
    assert len(ds) == 6


def test_s3_stale_manifest_entries_never_delete_outside_the_mirror(fake_s3, tmp_path):
    _dataset(fake_s3)
    ds = open_dataset("s3://bucket/data", cache_dir=tmp_path / "cache")
    victims = [tmp_path / "victim.png", tmp_path / "cache" / "victim.png"]
    for v in victims:
        v.write_bytes(b"keep me")
    manifest_path = ds.root / ".quicktune-etags.json"
    manifest = json.loads(manifest_path.read_text())
    # entries an older version could have written for keys like 'data//tmp/.../victim.png'
    manifest[str(victims[0])] = "old"
    manifest[os.path.relpath(victims[1], ds.root)] = "old"
    manifest_path.write_text(json.dumps(manifest))
    again = open_dataset("s3://bucket/data", cache_dir=tmp_path / "cache")
    assert all(v.read_bytes() == b"keep me" for v in victims)
    assert len(again) == 6 and set(json.loads(manifest_path.read_text())) == set(ds.paths)


def test_s3_mirror_never_writes_through_a_symlink_planted_in_the_cache(fake_s3, tmp_path):
    _dataset(fake_s3)
    ds = open_dataset("s3://bucket/data", cache_dir=tmp_path / "cache")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    import shutil

    shutil.rmtree(ds.root / "dog")
    (ds.root / "dog").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        open_dataset("s3://bucket/data", cache_dir=tmp_path / "cache")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    "uri", ["s3://bucket/a/../data", "s3://bucket/./data", "s3://bucket//data", "s3://../data", "s3://bucket/a\\b"]
)
def test_s3_unclean_prefix_is_refused_before_any_request(fake_s3, tmp_path, uri):
    with pytest.raises(UnsafePathError, match="use a clean s3://bucket/prefix"):
        open_dataset(uri, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_s3_prefix_with_or_without_slash_is_one_mirror_and_one_fingerprint(fake_s3, tmp_path):
    _dataset(fake_s3)
    a = open_dataset("s3://bucket/data", cache_dir=tmp_path / "cache")
    b = open_dataset("s3://bucket/data/", cache_dir=tmp_path / "cache")
    assert a.root == b.root and a.fingerprint == b.fingerprint and b.sync_stats["downloaded"] == 0


key_segments = st.sampled_from(
    [
        "cat",
        "dog",
        "x.png",
        "",
        ".",
        "..",
        ".git",
        "splits",
        "labels.csv",
        "t.txt",
        "a\\b.png",
        "\x00.png",
        "/",
        "é.png",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(
        st.one_of(st.lists(key_segments, min_size=1, max_size=6).map("/".join), st.text(max_size=30)), max_size=8
    )
)
def test_remote_files_maps_any_keys_inside_the_mirror_or_refuses(keys):
    from quicktune.data.s3 import remote_files

    prefix = "data/"
    objects = [{"Key": prefix + k, "ETag": '"e"'} for k in keys]
    root = Path("/nonexistent/cache/root")
    try:
        out = remote_files(objects, prefix, "s3://bucket/data/")
    except UnsafePathError:
        return
    for rel in out:
        path = confined(root, rel)  # never raises for what remote_files accepted
        assert _lexically_inside(path, root)
    files = set(out)
    assert not any(f.startswith(g + "/") for f in files for g in files)  # no key is also a folder


# --------------------------------------------------------------------------------------------
# Meta-Album labels.csv
# --------------------------------------------------------------------------------------------
def _meta_album(root: Path, names: list[str]) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["FILE_NAME,CATEGORY"]
    for i in range(4):
        Image.fromarray(np.full((4, 4), 40 * i, np.uint8)).save(root / "images" / f"{i}.png")
        rows.append(f"{i}.png,{'ab'[i % 2]}")
    rows += [f"{n},a" for n in names]
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    "entry,why",
    [
        ("../../secret.png", "'..'"),
        ("..\\..\\secret.png", "'..'"),
        ("/ABS/secret.png", "absolute path"),
        ("images//secret.png", "empty"),
    ],
)
def test_labels_csv_entries_cannot_read_outside_the_dataset(tmp_path, entry, why):
    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(secret)
    root = tmp_path / "ma"
    _meta_album(root, [entry.replace("/ABS", str(tmp_path))])
    with pytest.raises(UnsafePathError, match=f"labels.csv row 6: FILE_NAME .*{why}") as err:
        open_dataset(root)
    assert "secret" not in str(err.value) and isinstance(err.value, InvalidDatasetError)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.one_of(
        st.lists(st.sampled_from(["..", ".", "", "0.png", "images", "labels.csv", "\\"]), min_size=1, max_size=5).map(
            "/".join
        ),
        # any text a UTF-8 labels.csv can hold (a lone surrogate cannot be written to a file at all)
        st.text(alphabet=st.characters(codec="utf-8", blacklist_characters=',"\r\n'), max_size=20),
    )
)
@example(name="../labels.csv")  # exists: the old code listed it as an image of the dataset
@example(name="\u00e9/../../x.png")
@example(name="images/../../ma/labels.csv")
def test_labels_csv_any_entry_stays_inside_or_errors(tmp_path_factory, name):
    root = tmp_path_factory.mktemp("ma") / "ma"
    _meta_album(root, [name])
    try:
        ds = open_dataset(root)
    except InvalidDatasetError:
        return
    for rel in ds.paths:
        assert _lexically_inside(root / rel, root / "images")


# --------------------------------------------------------------------------------------------
# defect 5: the fingerprint does not depend on how the folder is named
# --------------------------------------------------------------------------------------------
def test_fingerprint_same_folder_by_any_name(tmp_path, monkeypatch):
    root = tmp_path / "data" / "digits"
    for cls, v in (("a", 10), ("b", 200)):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((4, 4), v + i, np.uint8)).save(root / cls / f"{i}.png")
    (tmp_path / "link").symlink_to(root)
    monkeypatch.chdir(tmp_path)
    spellings = [
        str(root),
        str(root) + "/",
        "data/digits",
        "./data/digits/",
        "data/../data/digits",
        "link",
        str(tmp_path / "link") + "/",
    ]
    prints = {s: open_dataset(s).fingerprint for s in spellings}
    assert len(set(prints.values())) == 1, prints
    assert len({canonical_uri(s) for s in spellings}) == 1
    assert canonical_uri("s3://b/p/") == canonical_uri("s3://b/p") == "s3://b/p"
    # ... and it does depend on the contents: a class replaced by another
    (root / "b" / "0.png").rename(root / "a" / "9.png")
    assert open_dataset("link").fingerprint != prints["link"]


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(
        st.one_of(st.text(max_size=20), st.sampled_from(["..", "/etc", "a/../..", "\\..", "x.json", "results/x.json"])),
        min_size=1,
        max_size=4,
    )
)
@example(parts=["/etc/passwd"])
@example(parts=["results", "../../x.json"])
def test_storage_join_stays_below_its_base(parts):
    base = os.path.join(tempfile.gettempdir(), "quicktune-join-base", "ckpt")  # a string only: nothing is written
    try:
        local = storage.join(base, *parts)
    except storage.StorageError:
        return
    assert os.path.normpath(local) == base or os.path.normpath(local).startswith(base + "/")
    remote = storage.join("s3://bucket/ckpt", *parts)
    assert remote.startswith("s3://bucket/ckpt") and "/../" not in remote + "/"
