"""Image decoding of the data layer: high bit depths and unusual modes, truncated and malformed files,
full-decode verification, and messages that name files without echoing contents or listing folders.

Issue 12, defects 4 (16-bit PNGs loaded as all-white), 9 (truncated images found late) and the
message rules of 7. Cost: a few seconds (tiny synthetic images, no S3, no training).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from quicktune.cli import main
from quicktune.data import DatasetError, open_dataset
from quicktune.data.errors import BadImageError, InvalidDatasetError
from quicktune.data.images import to_float, to_model_mode

SECRET = "AWS_SECRET_ACCESS_KEY=hunter2-do-not-echo"


def _save16(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path)  # mode I;16 -> 16-bit grayscale PNG


def _png(path: Path, value: int = 128, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


@pytest.fixture
def sixteen_bit(tmp_path) -> Path:
    """Two classes of 16-bit grayscale PNGs: dark (1k-21k) and bright (40k-60k), 6 images each."""
    rng = np.random.default_rng(0)
    root = tmp_path / "sixteen"
    for i in range(6):
        _save16(root / "dark" / f"{i}.png", rng.integers(1_000, 21_000, (12, 12)))
        _save16(root / "bright" / f"{i}.png", rng.integers(40_000, 60_000, (12, 12)))
    return root


# --------------------------------------------------------------------------------------------
# defect 4: 16-bit and other high-bit-depth images
# --------------------------------------------------------------------------------------------
def test_16bit_gray_png_classes_load_as_different_images(sixteen_bit):
    assert Image.open(sixteen_bit / "dark" / "0.png").mode == "I;16"  # what the files really are
    ds = open_dataset(sixteen_bit)
    assert ds.mode == "L" and ds.num_channels == 1
    means = {c: [] for c in ds.classes}
    for i, rel in enumerate(ds.paths):
        raw = np.asarray(Image.open(ds.root / rel)).astype(np.float64)
        img = np.asarray(ds.load_image(i)).astype(np.float64)
        # scaled by the real bit depth (/65535*255), rounded once - not clipped at 255
        assert np.abs(img - raw / 65535 * 255).max() <= 0.51
        means[ds.classes[ds.labels[i]]].append(img.mean())
    dark, bright = np.mean(means["dark"]), np.mean(means["bright"])
    assert dark < 90 and bright > 150 and bright - dark > 100, (dark, bright)
    # the float view keeps the 16-bit precision
    x = ds.load_array(0)
    raw = np.asarray(Image.open(ds.root / ds.paths[0])).astype(np.float64) / 65535
    assert x.shape == (12, 12, 1) and x.dtype == np.float32 and np.abs(x[..., 0] - raw).max() < 1e-6


def test_16bit_images_reach_the_training_transforms_distinct(sixteen_bit):
    """What ImageSet does with each image (resize to RGB, then the model's channels)."""
    from quicktune.finetune.transforms import resize_rgb, to_uint8

    ds = open_dataset(sixteen_bit)
    per_class = {0: [], 1: []}
    for i in range(len(ds)):
        x = to_uint8(resize_rgb(ds.load_image(i), 8), ds.num_channels)
        per_class[int(ds.labels[i])].append(float(x.float().mean()))
    bright, dark = (np.mean(per_class[k]) for k in (0, 1))  # classes sorted: bright, dark
    assert bright - dark > 100


def test_data_info_verify_reports_the_16bit_modes(sixteen_bit, capsys):
    assert main(["data", "info", str(sixteen_bit), "--verify", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verified"] == {"images": 12, "modes": {"I;16": 12}}
    assert main(["data", "info", str(sixteen_bit), "--verify"]) == 0
    assert "verified   12 images fully decoded (PIL modes: I;16 12)" in capsys.readouterr().out


def test_16bit_and_rgb_mixed_gives_gray_replicated_in_rgb(tmp_path):
    _save16(tmp_path / "d" / "a" / "0.png", np.full((4, 4), 65535 // 2))
    (tmp_path / "d" / "b").mkdir()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(tmp_path / "d" / "b" / "0.png")
    ds = open_dataset(tmp_path / "d")
    assert ds.mode == "RGB"
    assert np.asarray(ds.load_image(ds.paths.index("a/0.png"))).tolist()[0][0] == [127, 127, 127]
    assert np.asarray(ds.load_image(ds.paths.index("b/0.png"))).tolist()[0][0] == [10, 20, 30]


def _mode_image(mode: str) -> tuple[Image.Image, str, object]:
    """An in-memory image in ``mode`` and the pixel the model must see (in L or RGB)."""
    if mode in ("I;16", "I;16B", "I;16L"):
        dtype = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2"}[mode]
        im = Image.frombytes(mode, (2, 2), np.full((2, 2), 32896, dtype).tobytes())
        return im, "L", 128
    if mode == "I":
        return Image.fromarray(np.full((2, 2), 32896, np.int32)), "L", 128  # 16-bit data, as PNG/PGM give
    if mode == "I-negative":
        return Image.fromarray(np.full((2, 2), -5, np.int32)), "L", 0
    if mode == "F":
        return Image.fromarray(np.array([[0.5, 0.5], [0.5, 0.5]], np.float32)), "L", 128
    if mode == "F-out-of-range":
        return Image.fromarray(np.array([[np.nan, 7.0], [-1.0, 1.0]], np.float32)), "L", [[0, 255], [0, 255]]
    if mode == "LA":
        return Image.new("LA", (2, 2), (0, 0)), "L", 255  # fully transparent black -> white
    if mode == "RGBA":
        return Image.new("RGBA", (2, 2), (0, 0, 0, 0)), "RGB", [255, 255, 255]
    if mode == "RGBA-half":
        return Image.new("RGBA", (2, 2), (0, 0, 0, 128)), "RGB", [127, 127, 127]
    if mode == "PA":
        im = Image.new("P", (2, 2), 0)
        im.putpalette([200, 10, 10] + [0, 0, 0] * 255)
        return im.convert("PA"), "RGB", [200, 10, 10]
    if mode == "P-transparency":
        im = Image.new("P", (2, 2), 1)
        im.putpalette([0, 0, 0] * 256)
        im.info["transparency"] = 1
        return im, "RGB", [255, 255, 255]
    if mode == "CMYK":
        return Image.new("CMYK", (2, 2), (0, 0, 0, 0)), "RGB", [255, 255, 255]
    if mode == "1":
        return Image.new("1", (2, 2), 1), "L", 255
    if mode == "L":
        return Image.new("L", (2, 2), 77), "L", 77
    raise AssertionError(mode)


@pytest.mark.parametrize(
    "mode",
    [
        "I;16",
        "I;16B",
        "I;16L",
        "I",
        "I-negative",
        "F",
        "F-out-of-range",
        "LA",
        "RGBA",
        "RGBA-half",
        "PA",
        "P-transparency",
        "CMYK",
        "1",
        "L",
    ],
)
def test_every_mode_converts_by_its_real_range(mode):
    im, target, expected = _mode_image(mode)
    out = np.asarray(to_model_mode(im, target))
    assert out.dtype == np.uint8
    if isinstance(expected, list) and isinstance(expected[0], list):
        assert out.tolist() == expected
    elif isinstance(expected, list):
        assert out[0, 0].tolist() == expected
    else:
        assert (out == expected).all(), out
    f = to_float(im, 1 if target == "L" else 3)
    assert f.dtype == np.float32 and 0.0 <= f.min() and f.max() <= 1.0


def test_tiff_32bit_int_scaled_by_its_bits_per_sample(tmp_path):
    root = tmp_path / "tiff"
    for cls, value in (("a", 2**30), ("b", 2**29)):
        (root / cls).mkdir(parents=True)
        Image.fromarray(np.full((4, 4), value, np.int32)).save(root / cls / "0.tif")
    ds = open_dataset(root)
    a, b = (np.asarray(ds.load_image(ds.paths.index(f"{c}/0.tif"))) for c in ("a", "b"))
    # 2**30 of a signed 32-bit range is about half, not clipped to 255
    assert abs(int(a[0, 0]) - 128) <= 1 and abs(int(b[0, 0]) - 64) <= 1


# --------------------------------------------------------------------------------------------
# defect 9 (data side): truncated images, full decode, deterministic errors
# --------------------------------------------------------------------------------------------
def _truncated_png(path: Path) -> None:
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    big.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, pixels cut off


def test_truncated_image_fails_even_when_pillow_is_told_to_accept_them(tmp_path, monkeypatch):
    for i in range(3):
        _png(tmp_path / "d" / "a" / f"{i}.png")
        _png(tmp_path / "d" / "b" / f"{i}.png", 200)
    _truncated_png(tmp_path / "d" / "b" / "cut.png")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # e.g. set by another library
    ds = open_dataset(tmp_path / "d")
    with pytest.raises(BadImageError, match="image b/cut.png is truncated") as err:
        ds.load_image(ds.paths.index("b/cut.png"))
    assert isinstance(err.value, InvalidDatasetError)  # deterministic: a step reports 'invalid'
    assert err.value.files == ["b/cut.png"]


def test_verify_is_recorded_per_fingerprint_and_forced_by_the_cli(tmp_path, monkeypatch, capsys):
    for i in range(3):
        _png(tmp_path / "d" / "a" / f"{i}.png")
        _png(tmp_path / "d" / "b" / f"{i}.png", 200)
    ds = open_dataset(tmp_path / "d")
    assert ds.verify() == {"images": 6, "modes": {"L": 6}}
    import quicktune.data.images as images

    calls = []
    real = images.check_image
    monkeypatch.setattr(images, "check_image", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert open_dataset(tmp_path / "d").verify() == {"images": 6, "modes": {"L": 6}}
    assert calls == []  # recorded with the meta-features: free the second time
    _truncated_png(tmp_path / "d" / "b" / "1.png")  # new content -> new fingerprint -> checked again
    with pytest.raises(BadImageError, match="1 unreadable image"):
        open_dataset(tmp_path / "d").verify()
    assert len(calls) == 6
    assert main(["data", "info", str(tmp_path / "d"), "--verify"]) == 1
    err = capsys.readouterr().err
    assert "b/1.png is truncated" in err and "b/0.png" not in err


def test_verify_checks_png_crcs(tmp_path):
    for i in range(2):
        _png(tmp_path / "d" / "a" / f"{i}.png")
        _png(tmp_path / "d" / "b" / f"{i}.png", 200)
    path = tmp_path / "d" / "a" / "0.png"
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT")
    length = int.from_bytes(data[idat - 4 : idat], "big")
    data[idat + 4 + length] ^= 0xFF  # corrupt the IDAT chunk's CRC; the pixels still decode
    path.write_bytes(bytes(data))
    ds = open_dataset(tmp_path / "d")
    with pytest.raises(BadImageError, match="image a/0.png is corrupt"):
        ds.verify()


# --------------------------------------------------------------------------------------------
# malformed datasets: clear DatasetError, no contents echoed, no folder listings
# --------------------------------------------------------------------------------------------
def _two_classes(root: Path, n: int = 3) -> None:
    for i in range(n):
        _png(root / "cat" / f"{i}.png")
        _png(root / "dog" / f"{i}.png", 200)


@pytest.mark.parametrize(
    "content,reason",
    [
        (SECRET.encode() + b"\n" * 40, "not an image"),
        (b"", "empty file"),
        (b"\x89PNG\r\n\x1a\n" + SECRET.encode(), "truncated|corrupt"),
    ],
)
def test_bad_files_are_named_without_echoing_their_contents(tmp_path, content, reason):
    root = tmp_path / "d"
    _two_classes(root)
    (root / "dog" / "bad.png").write_bytes(content)
    ds = open_dataset(root)
    with pytest.raises(BadImageError) as err:
        ds.meta_features()  # the first thing a search does with a dataset
    msg = str(err.value)
    assert "dog/bad.png" in msg and re.search(reason, msg) and "hunter2" not in msg
    assert "cat/" not in msg and "dog/0.png" not in msg  # no siblings
    assert str(root / "dog" / "bad.png") not in msg  # names the file relative to the root only
    with pytest.raises(BadImageError) as err2:
        ds.load_image(ds.paths.index("dog/bad.png"))
    assert "hunter2" not in str(err2.value) and re.search(reason, str(err2.value))


def test_class_folder_without_images_names_one_folder_not_the_listing(tmp_path):
    root = tmp_path / "d"
    _two_classes(root)
    for name in ("secret-project-a", "secret-project-b", "zz-empty"):
        (root / name).mkdir()
    with pytest.raises(InvalidDatasetError) as err:
        open_dataset(root)
    msg = str(err.value)
    assert "class folder 'secret-project-a' has no images (and 2 more)" in msg
    assert "secret-project-b" not in msg and "zz-empty" not in msg and "cat" not in msg


def test_single_class_and_empty_are_deterministic_errors(tmp_path):
    _png(tmp_path / "one" / "cat" / "0.png")
    with pytest.raises(InvalidDatasetError, match="single class 'cat'"):
        open_dataset(tmp_path / "one")
    (tmp_path / "none").mkdir()
    with pytest.raises(InvalidDatasetError, match="dataset is empty"):
        open_dataset(tmp_path / "none")
    with pytest.raises(DatasetError, match="no such dataset folder") as err:
        open_dataset(tmp_path / "missing")  # may be a mount not there yet: not 'invalid'
    assert not isinstance(err.value, InvalidDatasetError)


def test_labels_csv_errors_do_not_echo_the_file(tmp_path):
    root = tmp_path / "ma"
    _png(root / "images" / "x.png")
    (root / "labels.csv").write_text(f"{SECRET},OTHER\nx.png,a\n")
    with pytest.raises(InvalidDatasetError, match=r"lacks column\(s\) \['CATEGORY', 'FILE_NAME'\]") as err:
        open_dataset(root)
    assert "hunter2" not in str(err.value)
    (root / "labels.csv").write_bytes(b'FILE_NAME,CATEGORY\n"x.png,a\n' + SECRET.encode() + b"\x00\n")
    with pytest.raises(InvalidDatasetError) as err:
        open_dataset(root)
    assert "hunter2" not in str(err.value)


def test_split_file_errors_do_not_list_the_folder_or_echo_lines(tmp_path):
    root = tmp_path / "d"
    _two_classes(root, n=4)
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("cat/0.png\ndog/0.png\n")
    (root / "splits" / "secret-notes.txt").write_text("x\n")
    with pytest.raises(InvalidDatasetError, match="splits/val.txt is missing") as err:
        open_dataset(root)
    assert "secret-notes" not in str(err.value)
    (root / "splits" / "val.txt").write_text(f"cat/1.png\n{SECRET}\n")
    with pytest.raises(InvalidDatasetError, match="val.txt line 2 names an entry that is not an image path") as err:
        open_dataset(root)
    assert "hunter2" not in str(err.value)


def test_a_file_name_cannot_forge_message_lines(tmp_path):
    root = tmp_path / "d"
    _two_classes(root)
    (root / "dog" / "x\nquicktune: all good.png").write_bytes(b"not an image")
    ds = open_dataset(root)
    with pytest.raises(BadImageError) as err:
        ds.meta_features()
    assert "\nquicktune: all good" not in str(err.value) and "x\\nquicktune: all good.png" in str(err.value)


def test_16bit_classes_are_learnable_by_a_real_step(tmp_path):
    """End to end through the finetuning step: on the old code both classes were white images and the
    validation score stayed at chance (0.5); scaled correctly they are trivially separable."""
    from quicktune.finetune.step import run_step

    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    for cls, lo, hi in (("dark", 1_000, 21_000), ("bright", 40_000, 60_000)):
        for i in range(20):
            _save16(root / cls / f"{i}.png", rng.integers(lo, hi, (16, 16)))
    r = run_step(
        {"model": "test_vit", "lr": 0.001, "batch_size": 8, "opt": "adamw"},
        str(root),
        3,
        str(tmp_path / "ck"),
        image_size=16,
        max_epochs=3,
    )
    assert r["status"] == "ok", r["message"]
    assert r["epochs"][-1]["score"] > 0.75, r["epochs"]
