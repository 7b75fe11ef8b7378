"""Decode one image file fully and convert it to what the model sees: 8-bit ``L`` or ``RGB``.

Why this module: Pillow's ``convert("L")`` *clips* high-bit-depth images to 255 instead of
scaling them - a 16-bit grayscale PNG (mode ``I;16``) with values 1,000-21,000 becomes a white
image, and so does one with values 40,000-60,000: two classes become identical. Here every mode is
mapped by its real range:

================================  ===============================================================
mode                              conversion
================================  ===============================================================
``L``, ``RGB``                    as is (the common case; exact, no copy through float)
``1``, ``P``, ``CMYK``, ``YCbCr``,  Pillow's own conversion (exact for these)
``LAB``, ``HSV``, ``RGBX``
``I;16``, ``I;16B``, ``I;16L``,   value / 65535 (the container is 16 bits)
``I;16N``
``I``                             value / (2**bits - 1), ``bits`` from the TIFF BitsPerSample tag
                                  (signed: 2**(bits-1) - 1), else 16 (PNG/PGM deliver 16-bit data
                                  as ``I``); negatives clip to 0
``F``                             taken as [0, 1] (the convention for float images), clipped;
                                  NaN -> 0
``RGBA``, ``LA``, ``PA``, ``La``,  alpha composited on white
``RGBa``, ``P``/``L``/``RGB`` +
transparency
================================  ===============================================================

then quantised once to 8 bits (``round(x * 255)``). :func:`to_float` gives the unquantised
``float32`` array in [0, 1] for callers that can keep the precision.

Decoding is always complete (``Image.load()``), with ``ImageFile.LOAD_TRUNCATED_IMAGES`` off, so a
truncated file fails here instead of silently yielding grey pixels. Errors are
:class:`BadImageError` with a fixed wording per kind of failure: Pillow's own messages can hold the
absolute path or bytes of the file, and these messages may be shown to other users.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from quicktune.data.errors import BadImageError, DatasetError
from quicktune.data.paths import shown

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)


def is_image_file(name: str) -> bool:
    """A file name the datasets read as an image (by extension; hidden files never)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith(".")


__all__ = [
    "GRAY_MODES",
    "DECODE_ERRORS",
    "no_truncated_loads",
    "open_full",
    "to_float",
    "to_model_mode",
    "check_image",
    "describe_error",
]

GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")
_HIGH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# Modes Pillow converts to L/RGB exactly (no clipping of a wider range).
_PLAIN_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


def no_truncated_loads() -> None:
    """Make sure Pillow refuses truncated files (``ImageFile.LOAD_TRUNCATED_IMAGES`` off)."""
    from PIL import ImageFile

    # A library (or a notebook) may have switched this on process-wide; with it on, Pillow pads a
    # truncated image with grey and reports success - exactly the silent corruption to refuse.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def describe_error(exc: BaseException) -> str:
    """A fixed, content-free reason for a decode failure (never Pillow's text)."""
    from PIL import Image

    if isinstance(exc, Image.DecompressionBombError):
        return "too many pixels (decompression-bomb limit)"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image in a format Pillow reads (or an empty file)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "a directory"
    text = str(exc).lower()
    if "truncated" in text or isinstance(exc, EOFError):
        return "truncated (the file ends before the image data does)"
    if isinstance(exc, DECODE_ERRORS):
        return f"corrupt or unsupported image data ({type(exc).__name__})"
    return f"cannot be decoded ({type(exc).__name__})"


# What Pillow's decoders raise on bad input (MemoryError is left out: a real out-of-memory is not
# a bad image).
DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    KeyError,
    IndexError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    struct.error,
)


def open_full(path: str | os.PathLike[str], rel: str, where: str) -> Any:
    """The image at ``path``, fully decoded (first frame); :class:`BadImageError` naming ``rel``."""
    from PIL import Image

    no_truncated_loads()
    try:
        if Path(path).stat().st_size == 0:
            raise BadImageError(f"{where}: image {shown(rel)} is an empty file (0 bytes)", [rel])
        im = Image.open(path)
        try:
            im.load()
        except BaseException:
            im.close()
            raise
        return im
    except BadImageError:
        raise
    except FileNotFoundError:
        # listed a moment ago, gone now: the dataset changed under us (not a bad image)
        raise DatasetError(f"{where}: image {shown(rel)} is missing (the dataset changed while in use?)") from None
    except (*DECODE_ERRORS, Image.DecompressionBombError) as exc:
        raise BadImageError(f"{where}: image {shown(rel)} is {describe_error(exc)}", [rel]) from None


def _bits_of_int_image(im: Any) -> tuple[int, bool]:
    """(bits, signed) of a mode-``I`` image's container."""
    tags = getattr(im, "tag_v2", None)
    if tags is not None:
        try:
            bits = tags.get(258)
            bits = int(bits[0] if isinstance(bits, (tuple, list)) else bits)
            fmt = tags.get(339)
            fmt = int(fmt[0] if isinstance(fmt, (tuple, list)) else fmt) if fmt is not None else 1
            if 1 <= bits <= 32:
                return bits, fmt == 2
        except (TypeError, ValueError, IndexError):
            pass
    return 16, False


def _high_to_float(im: Any) -> np.ndarray:
    """A mode I/I;16*/F image as float32 [H, W] in [0, 1]."""
    arr = np.asarray(im)
    if im.mode == "F":
        x = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return np.clip(x, 0.0, 1.0)
    if im.mode == "I":
        bits, signed = _bits_of_int_image(im)
        top = float(2 ** (bits - 1) - 1 if signed else 2**bits - 1)
    else:
        top = 65535.0
    return np.clip(arr.astype(np.float64) / top, 0.0, 1.0).astype(np.float32)


def _transparent_value(im: Any) -> Any:
    t = im.info.get("transparency")
    return t if isinstance(t, (int, float)) and not isinstance(t, bool) else None


def to_float(im: Any, channels: int) -> np.ndarray:
    """``im`` as float32 [H, W, channels] in [0, 1] (``channels`` 1 = luminance, 3 = RGB), alpha
    composited on white, high bit depths scaled by their real range (module docstring)."""

    if im.mode in _HIGH_MODES:
        x = _high_to_float(im)
        t = _transparent_value(im)
        if t is not None and im.mode != "F":
            x = np.where(np.asarray(im) == t, np.float32(1.0), x)
        x = x[..., None]
        return x if channels == 1 else np.repeat(x, 3, axis=2)
    has_alpha = im.mode in _ALPHA_MODES or (im.mode in ("P", "L", "RGB") and "transparency" in im.info)
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        a = rgba[..., 3:4]
        rgb = rgba[..., :3] * a + (1.0 - a)
        if channels == 3:
            return rgb.astype(np.float32)
        # ITU-R 601-2 luma, as Pillow's RGB -> L
        lum = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        return lum[..., None].astype(np.float32)
    target = "L" if channels == 1 else "RGB"
    try:
        conv = im if im.mode == target else im.convert(target)
    except ValueError:
        conv = im.convert("RGB").convert(target)
    arr = np.asarray(conv, dtype=np.float32) / 255.0
    return arr[..., None] if arr.ndim == 2 else arr


def _from_float(x: np.ndarray) -> Any:
    from PIL import Image

    q = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(q[..., 0], mode="L") if q.shape[2] == 1 else Image.fromarray(q, mode="RGB")


def to_model_mode(im: Any, mode: str) -> Any:
    """``im`` as an 8-bit PIL image in ``mode`` (``"L"`` or ``"RGB"``)."""
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
    if im.mode == mode and "transparency" not in im.info:
        return im.copy()
    if im.mode in _PLAIN_MODES and "transparency" not in im.info:
        try:
            return im.convert(mode)
        except ValueError:
            pass
    return _from_float(to_float(im, 1 if mode == "L" else 3))


def check_image(path: str | os.PathLike[str], rel: str, where: str, full: bool = True) -> str:
    """Decode the file completely (and, with ``full``, run Pillow's structural ``verify()`` first:
    PNG chunk CRCs, ...) and convert it the way training does. Returns the image's PIL mode;
    raises :class:`BadImageError` naming ``rel``."""
    from PIL import Image

    no_truncated_loads()
    if full:
        try:
            if Path(path).stat().st_size > 0:
                with Image.open(path) as probe:
                    probe.verify()
        except FileNotFoundError:
            pass  # open_full says so, as a (non-deterministic) DatasetError
        except (*DECODE_ERRORS, Image.DecompressionBombError) as exc:
            raise BadImageError(f"{where}: image {shown(rel)} is {describe_error(exc)}", [rel]) from None
    im = open_full(path, rel, where)
    try:
        mode = im.mode
        try:
            to_model_mode(im, "L" if mode in GRAY_MODES else "RGB")
        except (*DECODE_ERRORS,) as exc:
            raise BadImageError(
                f"{where}: image {shown(rel)} has an unsupported mode {mode!r} ({type(exc).__name__})", [rel]
            ) from None
        return mode
    finally:
        im.close()
