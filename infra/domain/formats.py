"""Image formats from their bytes alone: what the service accepts, and each file's header.

Pure Python, no OpenCV or numpy, so the API can validate an upload without decoding it
(decoding is the worker's job, infra/domain/images.py).  The format is decided by magic bytes,
never by file name; width x height is read from the header WITHOUT decoding pixels, and the
container is walked to its end (JPEG markers up to EOI, PNG chunks with CRCs up to IEND, GIF
trailer, RIFF size, BMP pixel array, TIFF strips/tiles), because OpenCV 4.x grey-fills a
truncated file instead of failing.  Every rejection is an ImageRejected with a readable message.
"""

from __future__ import annotations

import struct

from maskflow.infra.domain.containers import WALKERS
from maskflow.infra.domain.rejections import (CorruptImage, EmptyImage, ImageRejected, TooManyPixels,
                                              TruncatedImage, UnsupportedFormat)

DEFAULT_MAX_PIXELS = 40_000_000
SUPPORTED_FORMATS = ("jpeg", "png", "webp", "bmp", "tiff", "gif")
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
                 "bmp": "image/bmp", "tiff": "image/tiff", "gif": "image/gif"}
# The file name extension the service gives each format (input/<task>.<ext>).
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "bmp": "bmp", "tiff": "tiff", "gif": "gif"}


# ------------------------------------------------------------------ sniffing
def sniff_format(data: bytes) -> str | None:
    """Magic bytes -> 'jpeg' | 'png' | 'webp' | 'bmp' | 'tiff' | 'gif', else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM" and len(data) >= 26:
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def image_info(data: bytes) -> tuple[str, int, int, int]:
    """(format, width, height, exif_orientation) from headers only; validates the container."""
    if not data:
        raise EmptyImage("the file is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedFormat("not a supported image (expected " + ", ".join(SUPPORTED_FORMATS).upper() + ")")
    try:
        w, h, orientation = WALKERS[fmt](data)
    except struct.error as exc:
        raise TruncatedImage(f"{fmt.upper()} header is truncated") from exc
    if w <= 0 or h <= 0:
        raise CorruptImage(f"{fmt.upper()} declares invalid dimensions {w}x{h}")
    return fmt, w, h, orientation


def check_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, int, int, int]:
    """image_info, plus the pixel limit: everything that can be checked without decoding."""
    fmt, w, h, orientation = image_info(data)
    if w * h > max_pixels:
        raise TooManyPixels(f"image is {w}x{h} = {w * h / 1e6:.1f} MP, limit is {max_pixels / 1e6:.1f} MP",
                            w, h, max_pixels)
    return fmt, w, h, orientation


__all__ = ["CONTENT_TYPES", "DEFAULT_MAX_PIXELS", "EXTENSIONS", "SUPPORTED_FORMATS", "CorruptImage",
           "EmptyImage", "ImageRejected", "TooManyPixels", "TruncatedImage", "UnsupportedFormat",
           "check_header", "image_info", "sniff_format"]
