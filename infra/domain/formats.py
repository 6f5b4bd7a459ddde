"""Image formats from their bytes alone: what the service accepts, and each file's header.

Pure Python, no OpenCV or numpy, so the API can validate an upload without decoding it
(decoding is the worker's job, infra/domain/images.py).  The format is decided by magic bytes,
never by file name; width x height is read from the header WITHOUT decoding pixels, and the
container is walked to its end (JPEG markers up to EOI, PNG chunks with CRCs up to IEND, GIF
trailer, RIFF size, BMP pixel array, TIFF strips/tiles), because OpenCV 4.x grey-fills a
truncated file instead of failing.  Every rejection is an ImageRejected with a readable message.
"""

from __future__ import annotations

import re
import struct
import zlib

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


# ------------------------------------------------------------------ header walkers
# Each returns (width, height, exif_orientation) and raises TruncatedImage or CorruptImage.

def _u16be(d: bytes, o: int) -> int:
    return struct.unpack_from(">H", d, o)[0]


_JPEG_MARKER = re.compile(b"\\xff[^\\x00\\xd0-\\xd7\\xff]")


def _jpeg_info(d: bytes) -> tuple[int, int, int]:
    n = len(d)
    pos = 2
    size = None
    orientation = 1
    while True:
        # skip fill bytes to the next marker
        while pos < n and d[pos] != 0xFF:
            pos += 1  # tolerate junk between segments, as libjpeg does
        while pos < n and d[pos] == 0xFF:
            pos += 1
        if pos >= n:
            raise TruncatedImage("JPEG is truncated: end of file before the EOI marker")
        marker = d[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM / RSTn: no length
            continue
        if pos + 2 > n:
            raise TruncatedImage("JPEG is truncated inside a segment header")
        seglen = _u16be(d, pos)
        if seglen < 2:
            raise CorruptImage(f"JPEG segment 0xFF{marker:02X} has invalid length {seglen}")
        if pos + seglen > n:
            raise TruncatedImage(f"JPEG is truncated inside segment 0xFF{marker:02X}")
        seg = d[pos + 2:pos + seglen]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if len(seg) < 5:
                raise CorruptImage("JPEG SOF segment too short")
            if size is None:
                size = (_u16be(seg, 3), _u16be(seg, 1))
        elif marker == 0xE1 and seg[:6] == b"Exif\x00\x00" and orientation == 1:
            orientation = _tiff_orientation(seg[6:])
        pos += seglen
        if marker == 0xDA:  # SOS: skip entropy-coded data (FF00 stuffing, RSTn) to the next marker
            m = _JPEG_MARKER.search(d, pos)
            if m is None:
                raise TruncatedImage("JPEG is truncated: scan data ends without the EOI marker")
            pos = m.start()
    if size is None:
        raise CorruptImage("JPEG has no frame header (SOF)")
    return size[0], size[1], orientation


def _png_info(d: bytes) -> tuple[int, int, int]:
    n = len(d)
    pos = 8
    size = None
    orientation = 1
    while True:
        if pos + 8 > n:
            raise TruncatedImage("PNG is truncated: end of file before the IEND chunk")
        length, ctype = struct.unpack_from(">I4s", d, pos)
        if length > 0x7FFFFFFF:
            raise CorruptImage("PNG chunk length is invalid")
        end = pos + 8 + length + 4
        if end > n:
            raise TruncatedImage(f"PNG is truncated inside a {ctype.decode('latin-1')!r} chunk")
        body = d[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack_from(">I", d, pos + 8 + length)
        if zlib.crc32(ctype + body) & 0xFFFFFFFF != crc:
            raise CorruptImage(f"PNG chunk {ctype.decode('latin-1')!r} has a bad CRC")
        if size is None:
            if ctype != b"IHDR" or length < 13:
                raise CorruptImage("PNG does not start with an IHDR chunk")
            size = struct.unpack_from(">II", body, 0)
        elif ctype == b"eXIf":
            orientation = _tiff_orientation(body)
        elif ctype == b"IEND":
            break
        pos = end
    return size[0], size[1], orientation


def _gif_info(d: bytes) -> tuple[int, int, int]:
    if len(d) < 13:
        raise TruncatedImage("GIF is truncated inside its header")
    w, h = struct.unpack_from("<HH", d, 6)
    # walk blocks up to the end of the first image; later frames are ignored
    pos = 13
    flags = d[10]
    if flags & 0x80:
        pos += 3 * (2 << (flags & 7))
    n = len(d)

    def skip_sub_blocks(p: int) -> int:
        while True:
            if p >= n:
                raise TruncatedImage("GIF is truncated inside a data block")
            size = d[p]
            p += 1
            if size == 0:
                return p
            p += size

    while True:
        if pos >= n:
            raise TruncatedImage("GIF is truncated before its first image")
        b = d[pos]
        if b == 0x21:  # extension
            pos = skip_sub_blocks(pos + 2)
        elif b == 0x2C:  # image descriptor
            if pos + 10 > n:
                raise TruncatedImage("GIF is truncated inside an image descriptor")
            iflags = d[pos + 9]
            pos += 10
            if iflags & 0x80:
                pos += 3 * (2 << (iflags & 7))
            pos = skip_sub_blocks(pos + 1)  # +1: LZW minimum code size
            return w, h, 1
        elif b == 0x3B:
            raise CorruptImage("GIF contains no image")
        else:
            raise CorruptImage(f"GIF has an unknown block 0x{b:02X}")


def _webp_info(d: bytes) -> tuple[int, int, int]:
    if len(d) < 12:
        raise TruncatedImage("WebP is truncated inside its RIFF header")
    (riff_size,) = struct.unpack_from("<I", d, 4)
    if len(d) < 8 + riff_size:
        raise TruncatedImage(f"WebP is truncated: RIFF declares {8 + riff_size} bytes, file has {len(d)}")
    pos = 12
    size = None
    orientation = 1
    end = 8 + riff_size
    while pos + 8 <= end:
        ctype, clen = struct.unpack_from("<4sI", d, pos)
        body = d[pos + 8:pos + 8 + clen]
        if len(body) < clen:
            raise TruncatedImage(f"WebP is truncated inside chunk {ctype!r}")
        if size is None:
            if ctype == b"VP8X" and clen >= 10:
                w = 1 + int.from_bytes(body[4:7], "little")
                h = 1 + int.from_bytes(body[7:10], "little")
                size = (w, h)
            elif ctype == b"VP8 " and clen >= 10:
                if body[3:6] != b"\x9d\x01\x2a":
                    raise CorruptImage("WebP VP8 frame has a bad start code")
                w, h = struct.unpack_from("<HH", body, 6)
                size = (w & 0x3FFF, h & 0x3FFF)
            elif ctype == b"VP8L" and clen >= 5:
                if body[0] != 0x2F:
                    raise CorruptImage("WebP VP8L has a bad signature")
                bits = int.from_bytes(body[1:5], "little")
                size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
            else:
                raise CorruptImage(f"WebP starts with an unexpected chunk {ctype!r}")
        elif ctype == b"EXIF":
            b = body[6:] if body[:6] == b"Exif\x00\x00" else body
            orientation = _tiff_orientation(b)
        pos += 8 + clen + (clen & 1)
    if size is None:
        raise CorruptImage("WebP has no image chunk")
    return size[0], size[1], orientation


def _bmp_info(d: bytes) -> tuple[int, int, int]:
    if len(d) < 26:
        raise TruncatedImage("BMP is truncated inside its header")
    (offset,) = struct.unpack_from("<I", d, 10)
    (hsize,) = struct.unpack_from("<I", d, 14)
    if hsize == 12:
        w, h = struct.unpack_from("<HH", d, 18)
        bpp = struct.unpack_from("<H", d, 24)[0]
        compression = 0
    elif hsize >= 40 and len(d) >= 54:
        w, h, _, bpp, compression = struct.unpack_from("<iiHHI", d, 18)
    else:
        raise CorruptImage(f"BMP has an unsupported header size {hsize}")
    h = abs(h)
    if w <= 0 or h <= 0:
        raise CorruptImage(f"BMP has invalid dimensions {w}x{h}")
    if compression in (0, 3) and bpp in (1, 4, 8, 16, 24, 32):  # uncompressed: exact size known
        row = ((w * bpp + 31) // 32) * 4
        if len(d) < offset + row * h:
            raise TruncatedImage(f"BMP is truncated: pixel data needs {offset + row * h} bytes, file has {len(d)}")
    return w, h, 1


def _tiff_entries(d: bytes):
    """Yield (tag, type, count, value_or_offset_bytes, endian) for IFD0."""
    if len(d) < 8:
        raise TruncatedImage("TIFF is truncated inside its header")
    e = "<" if d[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(e + "I", d, 4)
    if ifd + 2 > len(d):
        raise TruncatedImage("TIFF is truncated: first IFD is past the end of file")
    (count,) = struct.unpack_from(e + "H", d, ifd)
    if ifd + 2 + 12 * count > len(d):
        raise TruncatedImage("TIFF is truncated inside its first IFD")
    for i in range(count):
        tag, typ, cnt = struct.unpack_from(e + "HHI", d, ifd + 2 + 12 * i)
        yield tag, typ, cnt, ifd + 2 + 12 * i + 8, e


def _tiff_values(d: bytes, typ: int, cnt: int, at: int, e: str) -> list[int]:
    fmt = {3: "H", 4: "I", 16: "Q"}.get(typ)
    if fmt is None:
        return []
    size = struct.calcsize(fmt) * cnt
    if size > 4:
        (at,) = struct.unpack_from(e + "I", d, at)
    if at + size > len(d):
        raise TruncatedImage("TIFF is truncated: a tag's values are past the end of file")
    return list(struct.unpack_from(e + fmt * cnt, d, at))


def _tiff_orientation(d: bytes) -> int:
    try:
        if d[:4] not in (b"II*\x00", b"MM\x00*"):
            return 1
        for tag, typ, cnt, at, e in _tiff_entries(d):
            if tag == 274 and cnt >= 1:
                v = _tiff_values(d, typ, 1, at, e)
                return v[0] if v and 1 <= v[0] <= 8 else 1
    except (ImageRejected, struct.error):
        pass  # malformed EXIF must not reject an otherwise fine image
    return 1


def _tiff_info(d: bytes) -> tuple[int, int, int]:
    tags = {}
    for tag, typ, cnt, at, e in _tiff_entries(d):
        if tag in (256, 257, 274, 273, 279, 324, 325):
            tags[tag] = _tiff_values(d, typ, cnt, at, e)
    if not tags.get(256) or not tags.get(257):
        raise CorruptImage("TIFF has no ImageWidth/ImageLength")
    for off_tag, cnt_tag in ((273, 279), (324, 325)):
        offs, cnts = tags.get(off_tag), tags.get(cnt_tag)
        if offs and cnts:
            end = max(o + c for o, c in zip(offs, cnts))
            if end > len(d):
                raise TruncatedImage(f"TIFF is truncated: image data needs {end} bytes, file has {len(d)}")
    orientation = tags.get(274, [1])[0] if tags.get(274) else 1
    return tags[256][0], tags[257][0], orientation if 1 <= orientation <= 8 else 1


WALKERS = {"jpeg": _jpeg_info, "png": _png_info, "gif": _gif_info, "webp": _webp_info,
         "bmp": _bmp_info, "tiff": _tiff_info}


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
