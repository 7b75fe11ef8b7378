"""Desktop icon themes from Debian packages, classified by the freedesktop context an icon is
filed under (actions, apps, devices, mimetypes, places, status, ...). Four themes of independent
artwork (Oxygen/KDE, GNOME, nuoveXT/LXDE, elementary Xfce); each is one source. One size per theme
(48 px); symlinked aliases and byte-identical copies count once (the first in sorted
context/file order), icons are composited on a white background (see the table in
:mod:`quicktune.data.packaged`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quicktune.data.packaged._common import PackagedData, build, digest, lazy_image, require_dir

ICONS_DIR = Path("/usr/share/icons")
#: contexts left out: animations (spinner sprite sheets), panel (monochrome tray glyphs)
SKIP_CONTEXTS = {"animations", "panel"}
RENAME = {"mimes": "mimetypes"}
MIN_PER_CLASS = 10


@dataclass(frozen=True)
class Theme:
    name: str  # the packaged dataset's name
    package: str  # the Debian package
    folder: str  # under ICONS_DIR
    size: str  # the size folder
    size_first: bool  # <size>/<context>/ (True) or <context>/<size>/ (False)


THEMES = {
    t.name: t
    for t in (
        Theme("oxygen-icons", "oxygen-icon-theme", "oxygen/base", "48x48", True),
        Theme("gnome-icons", "gnome-icon-theme", "gnome", "48x48", True),
        Theme("nuovext-icons", "lxde-icon-theme", "nuoveXT2", "48x48", True),
        Theme("elementary-icons", "elementary-xfce-icon-theme", "elementary-xfce", "48", False),
    )
}


def _context_dirs(root: Path, theme: Theme) -> list[tuple[str, Path]]:
    if theme.size_first:
        base = root / theme.size
        pairs = [(d.name, d) for d in base.iterdir() if d.is_dir()] if base.is_dir() else []
    else:
        pairs = [(d.name, d / theme.size) for d in root.iterdir() if (d / theme.size).is_dir()]
    return sorted((RENAME.get(c, c), d) for c, d in pairs if c not in SKIP_CONTEXTS)


def load_theme(name: str) -> PackagedData:
    theme = THEMES[name]
    root = require_dir(ICONS_DIR / theme.folder, name, theme.package)
    seen: set[str] = set()
    items = []
    for context, folder in _context_dirs(root, theme):
        for path in sorted(folder.glob("*.png")):
            if not path.is_file():  # a dangling alias
                continue
            data = path.read_bytes()
            key = digest(data)
            if key not in seen:
                seen.add(key)
                items.append((context, lazy_image(data)))
    return build(name, items, f"Debian {theme.package} ({root}, {theme.size})", min_per_class=MIN_PER_CLASS)


def _oxygen() -> PackagedData:
    return load_theme("oxygen-icons")


def _gnome() -> PackagedData:
    return load_theme("gnome-icons")


def _nuovext() -> PackagedData:
    return load_theme("nuovext-icons")


def _elementary() -> PackagedData:
    return load_theme("elementary-icons")
