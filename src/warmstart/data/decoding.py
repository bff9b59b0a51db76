"""Decoding images as cameras and tools write them, one way for training, evaluation, the feature cache and
prediction alike.

:func:`load_image` opens an image (a path, bytes, or a ``datasets`` image value) and returns it as the model sees it:

- **Orientation.** The EXIF orientation tag (phones store a portrait photo as a rotated landscape one plus the tag)
  is applied with ``ImageOps.exif_transpose`` before anything else, so the model sees the picture upright.
- **Frames.** An animated GIF / WebP or a multi-page TIFF gives its first frame.
- **Transparency.** ``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa`` / ``La`` and palette or colour-key images with
  a transparent colour are composited on :data:`BACKGROUND` (white, as a page shows them), not stripped of their alpha
  (which would show whatever colour the transparent pixels happen to hold, often black).
- **Depth.** 16-bit (``I;16*``), 32-bit integer (``I``) and float (``F``) images are scaled to 8 bits (Pillow's own
  conversion clips every value above 255 to white): ``I;16*`` and ``I`` holding values above 255 divide by 257
  (65535 -> 255), ``F`` in [0, 1] multiplies by 255; values outside the range are clipped.
- **Colour.** Everything else (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``) converts with Pillow to the
  model's channels: ``RGB`` for three, ``L`` for one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

BACKGROUND = (255, 255, 255)  # what transparent pixels are composited on
_ORIENTATION_TAG = 0x0112
_DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# what Pillow raises for a file it cannot read: not an image, truncated, a broken plugin stream, a decompression bomb
DECODE_ERRORS = (OSError, ValueError, SyntaxError, TypeError, AttributeError, Image.DecompressionBombError)


def load_image(source: str | Path | bytes | dict[str, Any], channels: int = 3) -> Image.Image:
    """Opens and decodes one image, upright, first frame, in the model's channels (see the module docstring).

    Args:
        source: a path, the file's bytes, or a ``datasets`` image value (``{"path": ..., "bytes": ...}``, bytes first).
        channels: 3 (``RGB``) or 1 (``L``).

    Raises:
        OSError, ValueError, PIL.UnidentifiedImageError, SyntaxError: what Pillow raises for a file it cannot read.
    """
    with Image.open(image_file(source)) as image:
        image.seek(0)  # the first frame of an animation or a multi-page file
        image.load()  # first: a PNG's EXIF may follow its pixels, and a broken pixel stream must raise here
        return to_channels(exif_upright(image), channels)


def decode_error(source: str | Path | bytes | dict[str, Any] | None) -> str | None:
    """Why an image cannot be decoded, in a few words (``None``: it decodes)."""
    if source is None or (isinstance(source, dict) and not source.get("bytes") and not source.get("path")):
        return "no image"
    try:
        load_image(source)
    except DECODE_ERRORS as err:
        return describe_error(err)
    return None


def describe_error(err: BaseException) -> str:
    """An exception's message on one line (its type where it has none)."""
    return " ".join(str(err).split()) or type(err).__name__


def image_file(source: str | Path | bytes | dict[str, Any]) -> Any:
    """What ``Image.open`` takes for a source: the path, or the bytes as a file (a ``datasets`` value: bytes first)."""
    if isinstance(source, dict):
        return io.BytesIO(source["bytes"]) if source.get("bytes") else source["path"]
    return io.BytesIO(source) if isinstance(source, bytes) else source


def exif_upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation tag says (the image itself when it has no tag or tag 1)."""
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError):  # a broken EXIF block (the pixels are loaded and good)
        return image
    if orientation in (None, 1):
        return image
    return ImageOps.exif_transpose(image) or image


def to_channels(image: Image.Image, channels: int = 3) -> Image.Image:
    """Converts a decoded image of any Pillow mode to ``RGB`` (``channels`` 3) or ``L`` (1), as the module says."""
    if channels not in (1, 3):
        raise ValueError(f"images are decoded to 1 or 3 channels, not {channels}")
    target = "RGB" if channels == 3 else "L"
    if image.mode in _DEEP_MODES:
        image = _to_8_bits(image)
    if image.mode in ("P", "L", "RGB", "1") and "transparency" in image.info:
        image = image.convert("RGBA")  # a palette entry or colour key marked transparent
    elif image.mode in _ALPHA_MODES and image.mode != "RGBA":
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        flat = Image.new("RGB", image.size, BACKGROUND)
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    return image if image.mode == target else image.convert(target)


def _to_8_bits(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and values.size and values.max() > 255):
        values = values / 257.0
    elif image.mode == "F" and values.size and np.nanmax(values) <= 1.0:
        values = values * 255.0
    values = np.nan_to_num(values, nan=0.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
