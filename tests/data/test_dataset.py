"""quicktune.data and quicktune.storage on real images (scikit-learn digits), locally and from SeaweedFS S3.

Cost: ~10 s without the S3 server, ~+5 s with it (server start ~1 s, shared per session).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quicktune import storage
from quicktune.cli import main
from quicktune.data import DatasetError, open_dataset
from quicktune.data.errors import BadImageError, InvalidDatasetError
from quicktune.data.packaged import import_dataset, load_packaged

# what the tiny_image_folder fixture (tests/conftest.py) writes
TINY_CLASSES, TINY_PER_CLASS, TINY_SIZE = 10, 30, 16


@pytest.fixture
def digits_copy(tiny_image_folder, tmp_path) -> Path:
    """A writable copy of the tiny dataset (tests that modify files use this)."""
    dest = tmp_path / "digits"
    shutil.copytree(tiny_image_folder, dest)
    return dest


def _png(path: Path, value: int = 128, mode: str = "L", size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size) if mode == "L" else (size, size, len(mode)), value, np.uint8)
    Image.fromarray(arr, mode=mode).save(path)


# --------------------------------------------------------------------------------------------
# image folder, splits, meta-features
# --------------------------------------------------------------------------------------------
def test_image_folder_classes_labels_and_images(tiny_image_folder, tmp_path):
    ds = open_dataset(tiny_image_folder, cache_dir=tmp_path / "cache")
    assert ds.layout == "image_folder"
    assert ds.classes == [str(i) for i in range(TINY_CLASSES)]
    assert len(ds) == TINY_CLASSES * TINY_PER_CLASS
    assert np.bincount(ds.labels).tolist() == [TINY_PER_CLASS] * TINY_CLASSES
    # labels follow the folders, paths are relative and sorted
    assert all(p.split("/")[0] == ds.classes[y] for p, y in zip(ds.paths, ds.labels, strict=False))
    assert ds.paths == sorted(ds.paths)
    img = ds.load_image(0)
    assert img.mode == "L" and img.size == (TINY_SIZE, TINY_SIZE) and ds.num_channels == 1
    # a real digit, not a constant image
    assert np.asarray(img).std() > 10


def test_stratified_split_is_60_20_20_disjoint_and_reproducible(tiny_image_folder):
    ds = open_dataset(tiny_image_folder)
    train, val, test = ds.split("train"), ds.split("val"), ds.split("test")
    assert (len(train), len(val), len(test)) == (180, 60, 60)
    assert len(set(train) | set(val) | set(test)) == len(ds)
    for part, per_class in ((train, 18), (val, 6), (test, 6)):
        assert np.bincount(ds.labels[part], minlength=TINY_CLASSES).tolist() == [per_class] * TINY_CLASSES
    again = open_dataset(tiny_image_folder, split_seed=0)
    assert all(np.array_equal(again.split(n), ds.split(n)) for n in ("train", "val", "test"))
    other = open_dataset(tiny_image_folder, split_seed=1)
    assert not np.array_equal(other.split("val"), ds.split("val"))
    assert ds.split_source == "stratified"
    with pytest.raises(DatasetError, match="unknown split 'valid'"):
        ds.split("valid")


def test_meta_features_computed_once_and_cached_beside_the_folder(digits_copy, monkeypatch):
    ds = open_dataset(digits_copy)
    feats = ds.meta_features()
    assert feats["num_classes"] == 10 and feats["num_images"] == 300 and feats["num_channels"] == 1
    assert feats["median_height"] == feats["median_width"] == TINY_SIZE
    assert feats["class_imbalance"] == 1.0 and feats["class_entropy"] == pytest.approx(1.0)
    assert (feats["num_train"], feats["num_val"], feats["num_test"]) == (180, 60, 60)
    cached = json.loads((digits_copy / ".quicktune-meta.json").read_text())
    assert cached["fingerprint"] == ds.fingerprint
    # a second open reads the cache: computing again would fail here
    from quicktune.data.dataset import ImageDataset

    monkeypatch.setattr(ImageDataset, "_compute_features", lambda self: pytest.fail("recomputed"))
    assert open_dataset(digits_copy).meta_features() == feats


def test_meta_features_of_an_unwritable_folder_go_to_the_cache_dir(digits_copy, tmp_path):
    # A folder in the way of the cache file makes the dataset folder unwritable for it, even as root.
    (digits_copy / ".quicktune-meta.json").unlink(missing_ok=True)
    (digits_copy / ".quicktune-meta.json").mkdir()
    ds = open_dataset(digits_copy, cache_dir=tmp_path / "cache")
    feats = ds.meta_features()
    cached = tmp_path / "cache" / "meta" / f"{ds.fingerprint}.json"
    assert json.loads(cached.read_text())["features"]["num_images"] == feats["num_images"] == 300


def test_fingerprint_is_stable_and_changes_with_the_files(digits_copy):
    fp = open_dataset(digits_copy).fingerprint
    assert open_dataset(digits_copy).fingerprint == fp
    first = sorted((digits_copy / "3").iterdir())[0]
    first.unlink()
    assert open_dataset(digits_copy).fingerprint != fp


def test_rgb_and_gray_mix_gives_three_channels_and_alpha_on_white(tmp_path):
    root = tmp_path / "mixed"
    for i in range(3):
        _png(root / "a" / f"{i}.png", 10)
        _png(root / "b" / f"{i}.png", 200, mode="RGBA")
    _png(root / "b" / "rgb.png", 50, mode="RGB")
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    transparent.save(root / "b" / "transparent.png")
    ds = open_dataset(root)
    assert ds.num_channels == 3 and ds.mode == "RGB"
    assert ds.load_image(0).mode == "RGB"
    idx = ds.paths.index("b/transparent.png")
    assert np.asarray(ds.load_image(idx)).min() == 255  # composited on white, not black


def test_meta_album_layout(tiny_image_folder, tmp_path):
    root = tmp_path / "ma"
    (root / "images").mkdir(parents=True)
    rows = ["FILE_NAME,CATEGORY,SUPER_CATEGORY"]
    for cls in ("1", "7"):
        for p in sorted((tiny_image_folder / cls).iterdir())[:10]:
            shutil.copy(p, root / "images" / f"{cls}_{p.name}")
            rows.append(f"{cls}_{p.name},digit {cls},digits")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = open_dataset(root)
    assert ds.layout == "meta_album"
    assert ds.classes == ["digit 1", "digit 7"]
    assert np.bincount(ds.labels).tolist() == [10, 10]
    assert all(p.startswith("images/") for p in ds.paths)
    assert ds.load_image(3).size == (TINY_SIZE, TINY_SIZE)

    (root / "labels.csv").write_text("FILE_NAME,LABEL\nx.png,a\n")
    with pytest.raises(DatasetError, match=r"labels.csv lacks column\(s\) \['CATEGORY'\]"):
        open_dataset(root)
    (root / "labels.csv").write_text("\n".join(rows + ["ghost.png,digit 1,digits"]) + "\n")
    with pytest.raises(DatasetError, match="images/ghost.png"):
        open_dataset(root)


# --------------------------------------------------------------------------------------------
# explicit split files
# --------------------------------------------------------------------------------------------
def _write_splits(root: Path, ds, names=("train", "val", "test")) -> dict[str, list[str]]:
    (root / "splits").mkdir(exist_ok=True)
    parts = {"train": ds.paths[0::3], "val": ds.paths[1::3], "test": ds.paths[2::3]}
    for n in names:
        (root / "splits" / f"{n}.txt").write_text("# comment\n\n" + "\n".join(parts[n]) + "\n")
    return parts


def test_explicit_split_files_are_used(digits_copy):
    ds = open_dataset(digits_copy)
    parts = _write_splits(digits_copy, ds)
    ds2 = open_dataset(digits_copy)
    assert ds2.split_source == "files"
    for name, rels in parts.items():
        assert [ds2.paths[i] for i in ds2.split(name)] == sorted(rels)


def test_split_file_naming_an_absent_image_is_an_error(digits_copy):
    ds = open_dataset(digits_copy)
    _write_splits(digits_copy, ds)
    with open(digits_copy / "splits" / "val.txt", "a") as f:
        f.write("4/does_not_exist.png\n")
    with pytest.raises(DatasetError, match=r"splits/val.txt line \d+ names '4/does_not_exist.png'"):
        open_dataset(digits_copy)


def test_missing_split_file_is_an_error(digits_copy):
    ds = open_dataset(digits_copy)
    _write_splits(digits_copy, ds, names=("train", "test"))
    with pytest.raises(DatasetError, match="splits/val.txt is missing"):
        open_dataset(digits_copy)


def test_image_in_two_splits_is_an_error(digits_copy):
    ds = open_dataset(digits_copy)
    _write_splits(digits_copy, ds)
    with open(digits_copy / "splits" / "test.txt", "a") as f:
        f.write(ds.paths[0] + "\n")
    with pytest.raises(DatasetError, match="listed in both splits/train.txt and splits/test.txt"):
        open_dataset(digits_copy)


# --------------------------------------------------------------------------------------------
# bad data
# --------------------------------------------------------------------------------------------
def test_empty_dataset(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="empty/?: dataset is empty: no images found"):
        open_dataset(tmp_path / "empty")
    _png(tmp_path / "empty" / "dog" / "0.png")
    with pytest.raises(InvalidDatasetError, match="class folder 'cat' has no images"):
        open_dataset(tmp_path / "empty")
    (tmp_path / "none").mkdir()
    _png(tmp_path / "none" / "loose.png")
    with pytest.raises(DatasetError, match="dataset is empty.*1 images lie directly in the folder"):
        open_dataset(tmp_path / "none")
    with pytest.raises(DatasetError, match="no such dataset folder"):
        open_dataset(tmp_path / "nope")


def test_single_class_dataset(tmp_path):
    for i in range(4):
        _png(tmp_path / "only" / "cat" / f"{i}.png")
    with pytest.raises(DatasetError, match="single class 'cat'"):
        open_dataset(tmp_path / "only")


def test_corrupt_image_is_named(digits_copy):
    bad = digits_copy / "5" / "broken.png"
    bad.write_bytes(b"this is not a png")
    ds = open_dataset(digits_copy)
    with pytest.raises(DatasetError, match="5/broken.png"):
        ds.meta_features()


def test_truncated_image_is_named_when_loaded(digits_copy, tmp_path):
    good = sorted((digits_copy / "2").iterdir())[0]
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "big.png")
    data = (tmp_path / "big.png").read_bytes()
    good.write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    ds = open_dataset(digits_copy)
    ds.meta_features()  # the header scan cannot see it ...
    with pytest.raises(BadImageError, match=f"image 2/{good.name} is truncated"):
        ds.load_image(ds.paths.index(f"2/{good.name}"))  # ... the full decode names it
    with pytest.raises(BadImageError, match=f"(?s)1 unreadable image.*2/{good.name}") as err:
        ds.verify()
    assert err.value.files == [f"2/{good.name}"]


# --------------------------------------------------------------------------------------------
# packaged datasets and the CLI
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,count,classes",
    [
        ("digits", 1797, 10),
        ("mnist5k", 5000, 10),
        ("animal-mnist", 10000, 10),
        ("lfw", 200, 2),
        ("fashion-mnist", 70000, 10),
        ("emoji", 1870, 9),
    ],
)
def test_packaged_datasets_load(name, count, classes):
    try:
        data = load_packaged(name)
    except DatasetError as exc:
        if "apt-get install" in str(exc):
            pytest.skip(str(exc))
        raise
    assert len(data.labels) == count and len(data.class_names) == classes
    assert set(np.unique(data.labels)) == set(range(classes))
    img = data.image(0)
    assert img.dtype == np.uint8 and img.std() > 0


def test_fashion_mnist_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("QUICKTUNE_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_packaged("fashion-mnist")


def test_import_class_subset_cap_and_size(tmp_path, capsys):
    dest = tmp_path / "sub"
    assert (
        main(["data", "import", "digits", str(dest), "--classes", "0,2,3", "--max-per-class", "7", "--size", "20"]) == 0
    )
    ds = open_dataset(dest)
    assert ds.classes == ["0", "2", "3"] and len(ds) == 21
    assert ds.load_image(0).size == (20, 20)
    # the destination is now not empty: nothing is overwritten without --force
    assert main(["data", "import", "digits", str(dest)]) == 1
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(DatasetError, match=r"classes \[12\] out of range 0..9"):
        import_dataset("digits", str(tmp_path / "bad"), classes=[0, 12])
    with pytest.raises(DatasetError, match="unknown packaged dataset 'cifar'"):
        import_dataset("cifar", str(tmp_path / "bad"))


def test_data_info_json(tiny_image_folder, capsys):
    assert main(["data", "info", str(tiny_image_folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"] == {"train": 180, "val": 60, "test": 60}
    assert info["meta_features"]["num_classes"] == 10
    assert main(["data", "info", "/nonexistent/dataset"]) == 1
    assert "no such dataset folder" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# storage (local)
# --------------------------------------------------------------------------------------------
def test_storage_local_roundtrip(tmp_path):
    target = tmp_path / "a" / "b" / "x.bin"
    storage.write_bytes(target, b"hello")
    assert storage.read_bytes(target) == b"hello" and storage.exists(target)
    assert storage.stat(target)["size"] == 5
    assert [p for p in os.listdir(target.parent)] == ["x.bin"]  # no temp file left
    storage.write_bytes(tmp_path / "a" / "y.bin", b"2")
    assert storage.list_uris(tmp_path / "a") == [str(target), str(tmp_path / "a" / "y.bin")]
    assert storage.list_uris(str(tmp_path / "a" / "y")) == [str(tmp_path / "a" / "y.bin")]
    storage.delete(target)
    storage.delete(target)  # absent: fine
    assert not storage.exists(target)
    with pytest.raises(storage.NotFoundError, match="x.bin: no such file"):
        storage.read_bytes(target)
    assert storage.list_uris(tmp_path / "missing") == []


# --------------------------------------------------------------------------------------------
# S3 (real SeaweedFS with credentials)
# --------------------------------------------------------------------------------------------
@pytest.fixture
def s3_digits(s3_env, tiny_image_folder):
    """The tiny dataset uploaded to a fresh prefix of bucket 'datasets'."""
    s3_env.create_bucket("datasets")
    prefix = f"s3://datasets/digits-{os.urandom(4).hex()}"
    from concurrent.futures import ThreadPoolExecutor

    def upload(path: Path) -> None:
        storage.write_bytes(f"{prefix}/{path.relative_to(tiny_image_folder).as_posix()}", path.read_bytes())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, sorted(tiny_image_folder.rglob("*.png"))))
    return prefix


def test_storage_s3_roundtrip(s3_env):
    s3_env.create_bucket("scratch")
    uri = f"s3://scratch/{os.urandom(3).hex()}/ckpt/model.safetensors"
    storage.write_bytes(uri, b"\x00" * 100)
    assert storage.read_bytes(uri) == b"\x00" * 100 and storage.exists(uri)
    assert storage.stat(uri) == {"size": 100, "version": "6d0bb00954ceb7fbee436bb55a8397a9"}  # MD5
    assert storage.list_uris(uri.rsplit("/", 1)[0] + "/") == [uri]
    storage.delete(uri)
    assert not storage.exists(uri)
    with pytest.raises(storage.NotFoundError, match="no such object"):
        storage.read_bytes(uri)
    with pytest.raises(storage.NoSuchBucketError, match="bucket 'no-such-bucket' does not exist"):
        storage.read_bytes("s3://no-such-bucket/x")
    with pytest.raises(storage.NoSuchBucketError):
        storage.exists("s3://no-such-bucket/x")
    with pytest.raises(storage.NoSuchBucketError):
        storage.stat("s3://no-such-bucket/x")


def test_storage_s3_endpoint_from_mlflow_variable(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_env.endpoint_url)
    s3_env.create_bucket("scratch")
    storage.write_bytes("s3://scratch/via-mlflow-var", b"ok")
    assert storage.read_bytes("s3://scratch/via-mlflow-var") == b"ok"


def test_dataset_from_s3_matches_local_and_is_cached_by_etag(s3_digits, tiny_image_folder, tmp_path):
    cache = tmp_path / "cache"
    ds = open_dataset(s3_digits, cache_dir=cache)
    local = open_dataset(tiny_image_folder)
    assert ds.classes == local.classes and ds.paths == local.paths
    assert np.array_equal(ds.labels, local.labels)
    assert all(np.array_equal(ds.split(n), local.split(n)) for n in ("train", "val", "test"))
    assert ds.sync_stats["downloaded"] == 300 and ds.sync_stats["reused"] == 0
    assert np.array_equal(np.asarray(ds.load_image(5)), np.asarray(local.load_image(5)))
    assert ds.meta_features()["num_images"] == 300

    again = open_dataset(s3_digits, cache_dir=cache)  # nothing fetched the second time
    assert again.sync_stats["downloaded"] == 0 and again.sync_stats["reused"] == 300
    assert again.fingerprint == ds.fingerprint

    changed = f"{s3_digits}/{ds.paths[0]}"
    storage.write_bytes(changed, (tiny_image_folder / ds.paths[1]).read_bytes())  # new content, new ETag
    storage.delete(f"{s3_digits}/{ds.paths[2]}")
    third = open_dataset(s3_digits, cache_dir=cache)
    assert (third.sync_stats["downloaded"], third.sync_stats["removed"]) == (1, 1)
    assert len(third) == 299 and third.fingerprint != ds.fingerprint
    assert not (third.root / ds.paths[2]).exists()


def test_interrupted_s3_download_resumes(s3_digits, tmp_path, monkeypatch):
    import botocore.client

    calls = {"n": 0}
    real = botocore.client.BaseClient._make_api_call

    def flaky(self, operation, params):
        if operation == "GetObject":
            calls["n"] += 1
            if calls["n"] > 120:
                raise KeyboardInterrupt("simulated interruption")
        return real(self, operation, params)

    monkeypatch.setenv("QUICKTUNE_S3_WORKERS", "1")
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", flaky)
    with pytest.raises(KeyboardInterrupt):
        open_dataset(s3_digits, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", real)
    ds = open_dataset(s3_digits, cache_dir=tmp_path / "cache")
    assert ds.sync_stats["reused"] == 120 and ds.sync_stats["downloaded"] == 180
    assert not list((tmp_path / "cache").rglob("*.part-*"))


def test_import_directly_to_s3(s3_env, tmp_path):
    s3_env.create_bucket("datasets")
    uri = f"s3://datasets/lfw-{os.urandom(3).hex()}"
    assert main(["data", "import", "lfw", uri, "--max-per-class", "12"]) == 0
    ds = open_dataset(uri, cache_dir=tmp_path / "c")
    assert ds.classes == ["0_face", "1_non-face"] and len(ds) == 24


def test_s3_wrong_secret_is_access_denied(s3_digits, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(DatasetError, match=f"{s3_digits}.*access denied.*SignatureDoesNotMatch") as err:
        open_dataset(s3_digits, cache_dir=tmp_path)
    assert "wrong-secret" not in str(err.value)
    assert isinstance(err.value.__cause__, storage.AccessDeniedError)


def test_s3_missing_bucket(s3_env, tmp_path):
    with pytest.raises(DatasetError, match="bucket 'nonexistent-bucket' does not exist"):
        open_dataset("s3://nonexistent-bucket/data", cache_dir=tmp_path)


def test_s3_empty_prefix(s3_env, tmp_path):
    s3_env.create_bucket("datasets")
    with pytest.raises(DatasetError, match="dataset is empty: no images under s3://datasets/void/"):
        open_dataset("s3://datasets/void", cache_dir=tmp_path)


def test_s3_unreachable_endpoint(monkeypatch, tmp_path):
    from quicktune.testing import free_port_pair

    (port,) = free_port_pair(1, offset=0)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    with pytest.raises(DatasetError, match=f"cannot reach the S3 endpoint http://127.0.0.1:{port} \\(tried 2 times\\)"):
        open_dataset("s3://bucket/data", cache_dir=tmp_path)


def test_s3_no_credentials(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(DatasetError, match="no S3 credentials found; set AWS_ACCESS_KEY_ID"):
        open_dataset("s3://bucket/data", cache_dir=tmp_path)
