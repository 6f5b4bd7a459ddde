"""Image I/O for the worker: decode uploads, encode results (OpenCV).

Decoding policy (decode_image):
* Formats: JPEG, PNG (APNG: first frame), WebP (animated: first frame), BMP,
  TIFF (first page), GIF (first frame).  Format is decided by magic bytes,
  never by file name.
* Size limit and truncation: infra/formats.check_header reads width*height from
  the header and walks the container before OpenCV allocates anything, so a
  small decompression bomb or a truncated file is rejected cheaply.
* Output is always H x W x 3 uint8 RGB:
  - EXIF orientation (JPEG APP1, PNG eXIf, WebP EXIF, TIFF tag 274) is applied;
  - grayscale is replicated to 3 channels;
  - 16-bit samples are scaled to 8 bit (round(v * 255 / 65535));
  - alpha is composited on WHITE (a transparent logo stays readable and the
    segmenter sees a plain background);
  - CMYK JPEGs are converted to RGB by libjpeg/OpenCV.
Every rejection raises a subclass of ImageRejected with a readable message.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

# OpenCV's own pixel cap (default 2^30) is a last-resort backstop only: our
# header check runs first with the caller's max_pixels.  Must be set before
# cv2 is imported, hence here.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 30))

import cv2  # noqa: E402

try:
    import fpng  # see encode_cutout_png
except ImportError:  # pragma: no cover - a platform without it: OpenCV writes the cut-outs
    fpng = None
try:
    from isal import isal_zlib  # see encode_mask_png
except ImportError:  # pragma: no cover - a platform without it: OpenCV writes the masks
    isal_zlib = None

from maskflow.infra.domain.formats import (DEFAULT_MAX_PIXELS, CorruptImage, TooManyPixels,  # noqa: E402
                                           check_header)
from maskflow.infra.domain.options import Options  # noqa: E402
from maskflow.infra.domain.outputs import ResultKind  # noqa: E402


# ------------------------------------------------------------------ decode
# A JPEG has neither alpha nor 16 bit: libjpeg writes its RGB straight (see decode_image).
JPEG_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION


def _apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    # EXIF 1..8 -> the transform that makes the image upright.  OpenCV's, not numpy's strided
    # views copied: 2.9 against 29.5 ms to turn a 2400x1800 photo (orientation 6).
    if orientation == 2:
        return cv2.flip(img, 1)
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)
    if orientation == 5:
        return cv2.transpose(img)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(img), -1)
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


def _to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if img.dtype in (np.float32, np.float64):
        return (np.clip(np.nan_to_num(img), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if img.dtype == np.int8:
        return (img.astype(np.int16) + 128).astype(np.uint8)
    if img.dtype == np.int16:
        return ((img.astype(np.int32) + 32768) >> 8).astype(np.uint8)
    raise CorruptImage(f"unsupported sample type {img.dtype}")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode bytes to an upright H x W x 3 uint8 RGB array (see module docstring).

    Raises EmptyImage, UnsupportedFormat, CorruptImage, TruncatedImage or
    TooManyPixels (all ImageRejected)."""
    fmt, _w, _h, orientation = check_header(data, max_pixels)
    buf = np.frombuffer(data, np.uint8)
    jpeg = fmt == "jpeg"
    try:
        # IMREAD_UNCHANGED keeps alpha and 16 bit; both skip OpenCV's EXIF handling,
        # which we do ourselves (above) for every format.
        img = cv2.imdecode(buf, JPEG_FLAGS if jpeg else cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise CorruptImage(f"{fmt.upper()} could not be decoded: {str(exc).strip().splitlines()[-1]}") from exc
    if img is None or img.size == 0:
        raise CorruptImage(f"{fmt.upper()} could not be decoded (damaged data)")
    if img.shape[0] * img.shape[1] > max_pixels:  # header lied
        raise TooManyPixels(f"decoded image is {img.shape[1]}x{img.shape[0]}, limit is {max_pixels} pixels",
                            img.shape[1], img.shape[0], max_pixels)

    if jpeg:  # upright RGB already, but for its orientation
        return np.ascontiguousarray(_apply_orientation(img, orientation))
    if img.ndim == 2:
        img = img[:, :, None]
    img = _to_uint8(img)
    ch = img.shape[2]
    if ch == 1:
        rgb = np.repeat(img, 3, axis=2)
    elif ch == 2:  # gray + alpha
        rgb = _composite_white(np.repeat(img[:, :, :1], 3, axis=2), img[:, :, 1])
    elif ch == 3:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)  # 4x faster than a numpy channel flip
    elif ch == 4:
        rgb = _composite_white(img[:, :, 2::-1], img[:, :, 3])
    else:
        raise CorruptImage(f"{fmt.upper()} has {ch} channels; expected 1-4")
    return np.ascontiguousarray(_apply_orientation(rgb, orientation))


def _composite_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.uint16)[:, :, None]
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


# ------------------------------------------------------------------ encode
JPEG_QUALITY = 90  # a cut-out on its background, from a photo: no visible loss, a tenth of PNG
# OpenCV's PNG settings for what it writes (webp/jpeg aside): zlib level 1 + RLE + PAETH gave the
# smallest files among the fast settings on a 1024x768 photo (tests/bench/model.py).
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
              cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_PAETH]
# The mask without ISA-L: the fastest OpenCV setting for masks (tests/bench/mask_png.py).
MASK_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
                   cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode_mask_png(mask: np.ndarray, params: list[int] | None = None) -> bytes:
    """8-bit single-channel PNG of a uint8 H x W mask (0..255 soft probability).

    A mask is flat but for its edges, so the Up filter leaves almost only zeros, which ISA-L's
    deflate level 1 packs fast: 0.4 ms against OpenCV's 3.1 ms (level 1, RLE, Paeth) for a
    1024x768 mask, 45 KB against 38 KB; 2.0 against 19 ms at 2400x1800 (tests/bench/mask_png.py).  Without ISA-L (or with
    `params`), OpenCV writes it; both decode to the same pixels (tests/unit/test_images.py).
    """
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be HxW uint8, got {mask.shape} {mask.dtype}")
    if params is not None or isal_zlib is None or not mask.size:
        return encode_png_opencv(mask, MASK_PNG_PARAMS if params is None else params)
    height, width = mask.shape
    rows = np.empty((height, width + 1), np.uint8)  # each row: its filter type, then its bytes
    rows[:, 0] = 2  # Up: each byte minus the one above it, modulo 256 (PNG spec 9.2)
    rows[0, 1:] = mask[0]
    np.subtract(mask[1:], mask[:-1], out=rows[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    return b"".join((PNG_SIGNATURE, _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", isal_zlib.compress(rows, 1)), _png_chunk(b"IEND", b"")))


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def cutout_rgba(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The cut-out's pixels: the image with the mask as alpha (same H x W), RGBA order.

    Pixels under alpha 0 are stored as zero (as rembg does): nobody sees them, and a flat
    background makes the PNG smaller and faster to write.
    """
    rgb = np.asarray(rgb)
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be HxWx3 uint8, got {rgb.shape} {rgb.dtype}")
    if mask.shape != rgb.shape[:2] or mask.dtype != np.uint8:
        raise ValueError(f"mask {mask.shape} {mask.dtype} does not match image {rgb.shape[:2]}")
    # OpenCV, not numpy boolean indexing: 1.1 ms against 35 ms for a 1024x768 photo.  copyTo
    # copies where the mask is not 0 into zeros; alpha is 0 there already.
    return cv2.merge((cv2.copyTo(rgb, mask), mask))


def encode_cutout_png(rgb: np.ndarray, mask: np.ndarray) -> bytes:
    """RGBA PNG of cutout_rgba(rgb, mask).

    fpng writes it when installed (the worker extra pins it): 3.5x faster than OpenCV's zlib
    on 1024x768 photos (tests/bench/model.py), for files about 20 % larger.  Without it,
    OpenCV writes the same pixels (tests/unit/test_images.py decodes both with two decoders).
    fpng holds the GIL while it encodes; ISA-L, which does not, drained slower all the same
    (docs/benchmarks.md, "Two more layouts").
    """
    rgba = cutout_rgba(rgb, mask)
    if fpng is not None:
        return fpng.from_ndarray(rgba)
    return encode_png_opencv(rgba[:, :, [2, 1, 0, 3]])


def encode_png_opencv(image: np.ndarray, params: list[int] | None = None) -> bytes:
    """PNG of a gray, BGR or BGRA uint8 image with OpenCV (PNG_PARAMS unless given)."""
    ok, out = cv2.imencode(".png", image, PNG_PARAMS if params is None else params)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return out.tobytes()


def crop_box(alpha: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The rows and columns of the alpha's bounding box, `margin` pixels wider where the image
    allows; the whole image when nothing shows."""
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if not rows.size:
        return slice(None), slice(None)
    h, w = alpha.shape
    return (slice(max(0, rows[0] - margin), min(h, rows[-1] + 1 + margin)),
            slice(max(0, cols[0] - margin), min(w, cols[-1] + 1 + margin)))


def on_background(colours: np.ndarray, alpha: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """The cut-out composited onto an opaque colour: RGB, no alpha."""
    a = alpha.astype(np.uint16)[:, :, None]
    bg = np.asarray(rgb, np.uint16)
    return ((colours.astype(np.uint16) * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


def encode_webp_lossless(pixels: np.ndarray) -> bytes:
    """Lossless WebP of RGB(A) pixels at libwebp's effort 1.

    Through Pillow, because OpenCV cannot choose the effort: its default (4) took 4x as long
    for 4% fewer bytes on the test photos (tests/bench/outputs.py; docs/benchmarks.md).
    """
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "WEBP", lossless=True, method=1, quality=0)
    return out.getvalue()


def encode_cutout(colours: np.ndarray, alpha: np.ndarray, options: Options) -> bytes:
    """The cut-out as the task's options ask: cropped, on a background, in a format."""
    if options.premultiplied:
        colours = ((colours.astype(np.uint16) * alpha[:, :, None] + 127) // 255).astype(np.uint8)
    if options.crop:
        rows, cols = crop_box(alpha, options.crop_margin)
        colours, alpha = np.ascontiguousarray(colours[rows, cols]), np.ascontiguousarray(alpha[rows, cols])
    background = options.background_rgb
    if background is None and options.format == "png":
        return encode_cutout_png(colours, alpha)
    pixels = cutout_rgba(colours, alpha) if background is None else on_background(colours, alpha, background)
    if options.format == "webp":
        return encode_webp_lossless(pixels)
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGRA if pixels.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    if options.format == "png":
        return encode_png_opencv(bgr)
    ok, out = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("jpeg encoding failed")
    return out.tobytes()


# The encoder of each result kind (infra/domain/outputs.py), from the cut-out's colours and alpha.
ENCODERS: dict[str, Callable[[np.ndarray, np.ndarray, Options], bytes]] = {
    "output": encode_cutout,
    "mask": lambda colours, alpha, options: encode_mask_png(alpha),
}


def encode_result(kind: ResultKind, colours: np.ndarray, alpha: np.ndarray, options: Options) -> bytes:
    return ENCODERS[kind.name](colours, alpha, options)
