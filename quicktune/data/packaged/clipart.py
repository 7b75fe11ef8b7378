"""Colour drawings from Debian packages, by the package's own categories: Tux Paint stamps,
Open Clip Art, and the famfamfam Silk icons by the object they draw (see the table in
:mod:`quicktune.data.packaged`)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from quicktune.data.errors import DatasetError
from quicktune.data.packaged._common import (
    MAX_SOURCE_SIDE,
    PackagedData,
    build,
    digest,
    lazy_file,
    lazy_image,
    png_side,
    require_dir,
)

TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")
OPENCLIPART_DIR = Path("/usr/share/openclipart/png")
SILK_MODULE = Path("/usr/share/perl5/Icon/FamFamFam/Silk.pm")

#: largest side of the clip art images handed out (they are cropped to their drawing and padded
#: to a square first); native files are 100-4,000 px
CLIPART_SIDE = 128

#: Tux Paint's "symbols" category is a grab bag (letters in outline/filled pairs, chess, maths,
#: money); its other categories are kinds of things. Mirrored/flipped variants are near-duplicates.
TUXPAINT_SKIP = {"symbols"}
TUXPAINT_VARIANT = re.compile(r"_(mirror|flip)\.png$")

#: Open Clip Art categories that are kinds of things; left out: computer (icon sets), shapes
#: (1,400 generated stars), signs_and_symbols (550 flags), and the grab bags (unsorted, special,
#: buttons, logos, containers, decorations)
OPENCLIPART_CLASSES = [
    "animals",
    "buildings",
    "education",
    "electronics",
    "food",
    "geography",
    "office",
    "people",
    "plants",
    "recreation",
    "science",
    "tools",
    "transportation",
]

#: Silk icons are named by the object drawn then its modifier (``folder_add``, ``page_white_zip``):
#: the first word is the class; a class needs this many icons
SILK_MIN = 10


def _unique_pngs(folder: Path, files: list[Path]) -> list[tuple[Path, bytes]]:
    """(path, bytes) of the files in sorted order, skipping byte-identical copies and oversized ones."""
    seen: set[str] = set()
    out = []
    for path in sorted(files, key=lambda p: p.relative_to(folder).as_posix()):
        if not 0 < png_side(path) <= MAX_SOURCE_SIDE:
            continue
        data = path.read_bytes()
        key = digest(data)
        if key not in seen:
            seen.add(key)
            out.append((path, data))
    return out


def _tuxpaint() -> PackagedData:
    root = require_dir(TUXPAINT_DIR, "tuxpaint", "tuxpaint-stamps-default")
    files = [
        p
        for p in root.rglob("*.png")
        if p.relative_to(root).parts[0] not in TUXPAINT_SKIP and not TUXPAINT_VARIANT.search(p.name)
    ]
    items = [
        (path.relative_to(root).parts[0], lazy_file(path, CLIPART_SIDE, crop=True))
        for path, _ in _unique_pngs(root, files)
    ]
    return build("tuxpaint", items, f"Debian tuxpaint-stamps-default ({root})", min_per_class=10)


def _openclipart() -> PackagedData:
    root = require_dir(OPENCLIPART_DIR, "openclipart", "openclipart-png")
    files = [p for c in OPENCLIPART_CLASSES if (root / c).is_dir() for p in (root / c).rglob("*.png")]
    items = [
        (path.relative_to(root).parts[0], lazy_file(path, CLIPART_SIDE, crop=True))
        for path, _ in _unique_pngs(root, files)
    ]
    return build(
        "openclipart", items, f"Debian openclipart-png ({root})", min_per_class=10, classes=OPENCLIPART_CLASSES
    )


def _silk() -> PackagedData:
    if not SILK_MODULE.is_file():
        raise DatasetError(
            f"silk-icons: {SILK_MODULE} is missing; install it with `apt-get install libicon-famfamfam-silk-perl`"
        )
    text = SILK_MODULE.read_text(encoding="ascii", errors="replace")
    icons = sorted(re.findall(r"^(\w+)=>'([A-Za-z0-9+/=]+)'", text, re.M))
    if not icons:
        raise DatasetError(f"silk-icons: no icons found in {SILK_MODULE}")
    seen: set[str] = set()
    items = []
    for icon, b64 in icons:
        data = base64.b64decode(b64)
        key = digest(data)
        if key not in seen:
            seen.add(key)
            items.append((icon.split("_", 1)[0], lazy_image(data)))
    return build("silk-icons", items, f"Debian libicon-famfamfam-silk-perl ({SILK_MODULE})", min_per_class=SILK_MIN)
