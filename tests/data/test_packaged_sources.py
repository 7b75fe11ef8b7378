"""The packaged sources added for the second meta-dataset campaign (clip art, icon themes): each
yields >= 2 classes of RGB images, the same way every time, and says which package to install
when its files are absent. A source's test is skipped only when its Debian package is missing."""

from __future__ import annotations

import numpy as np
import pytest

from quicktune.data.errors import DatasetError
from quicktune.data.packaged import LOADERS, clipart, icons, import_dataset, load_packaged

# name -> (path that the package installs, Debian package, image side)
SOURCES = {
    "tuxpaint": (clipart.TUXPAINT_DIR, "tuxpaint-stamps-default", clipart.CLIPART_SIDE),
    "openclipart": (clipart.OPENCLIPART_DIR, "openclipart-png", clipart.CLIPART_SIDE),
    "silk-icons": (clipart.SILK_MODULE, "libicon-famfamfam-silk-perl", 16),
    **{name: (icons.ICONS_DIR / t.folder, t.package, 48) for name, t in icons.THEMES.items()},
}


def _installed(name: str) -> bool:
    path = SOURCES[name][0]
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def test_every_new_source_is_registered():
    assert set(SOURCES) <= set(LOADERS)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_source_loads_rgb_classes_deterministically(name):
    if not _installed(name):
        pytest.skip(f"{SOURCES[name][1]} is not installed")
    a, b = load_packaged(name), load_packaged(name)
    assert a.class_names == b.class_names and np.array_equal(a.labels, b.labels)
    assert len(a.class_names) >= 2 and set(np.unique(a.labels)) == set(range(len(a.class_names)))
    counts = np.bincount(a.labels)
    assert counts.min() >= 10
    side = SOURCES[name][2]
    for c in range(len(a.class_names)):
        i = int(np.flatnonzero(a.labels == c)[0])
        img = a.image(i)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and max(img.shape[:2]) <= side
        assert img.std() > 0
        assert np.array_equal(img, b.image(i))  # the same pixels from a fresh load
    # transparent pixels are composited on the fixed white background: the corner of an icon or
    # a padded drawing is white far more often than not
    corners = [a.image(int(i))[0, 0] for i in np.linspace(0, len(a.labels) - 1, 20).astype(int)]
    assert sum(bool((c == 255).all()) for c in corners) >= 10


@pytest.mark.parametrize(
    "name,module,attr",
    [
        ("tuxpaint", clipart, "TUXPAINT_DIR"),
        ("openclipart", clipart, "OPENCLIPART_DIR"),
        ("silk-icons", clipart, "SILK_MODULE"),
        *[(name, icons, "ICONS_DIR") for name in icons.THEMES],
    ],
)
def test_missing_package_says_what_to_install(name, module, attr, monkeypatch, tmp_path):
    monkeypatch.setattr(module, attr, tmp_path / "empty")
    with pytest.raises(DatasetError, match=f"apt-get install {SOURCES[name][1]}"):
        load_packaged(name)
    (tmp_path / "empty").mkdir()
    if attr != "SILK_MODULE":  # an empty folder is as good as a missing one
        with pytest.raises(DatasetError, match=f"apt-get install {SOURCES[name][1]}"):
            load_packaged(name)


def test_icon_theme_dedups_aliases_and_skips_small_contexts(monkeypatch, tmp_path):
    """A synthetic theme: symlinked aliases count once, a context under the minimum is dropped,
    animations are never a class; RGBA is composited on white."""
    from PIL import Image

    root = tmp_path / "gnome" / "48x48"
    rng = np.random.default_rng(0)
    for context, n in (("actions", 12), ("devices", 11), ("emotes", 3), ("animations", 12)):
        (root / context).mkdir(parents=True)
        for k in range(n):
            px = rng.integers(0, 256, (48, 48, 4), dtype=np.uint8)
            px[:4, :4, 3] = 0  # a transparent corner
            Image.fromarray(px, "RGBA").save(root / context / f"icon{k:02d}.png")
    (root / "devices" / "alias.png").symlink_to(root / "actions" / "icon00.png")
    monkeypatch.setattr(icons, "ICONS_DIR", tmp_path)
    data = load_packaged("gnome-icons")
    assert data.class_names == ["actions", "devices"]
    assert np.bincount(data.labels).tolist() == [12, 11]
    assert (data.image(0)[0, 0] == 255).all()


def test_import_writes_class_folders(tmp_path):
    if not _installed("silk-icons"):
        pytest.skip("libicon-famfamfam-silk-perl is not installed")
    summary = import_dataset("silk-icons", str(tmp_path / "out"), classes=[0, 1], max_per_class=5, size=32)
    data = load_packaged("silk-icons")
    assert summary["classes"] == [f"0_{data.class_names[0]}", f"1_{data.class_names[1]}"]
    assert summary["num_images"] == 10
    from PIL import Image

    first = sorted((tmp_path / "out" / summary["classes"][0]).glob("*.png"))[0]
    with Image.open(first) as img:
        assert img.mode == "RGB" and img.size == (32, 32)
