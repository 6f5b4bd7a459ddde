"""infra/domain/images.py: decoding policy, limits, rejections and PNG encoding."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib

import cv2
import numpy as np
import PIL.Image
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checks import exif_tiff, jpeg_with_orientation
from maskflow.infra.domain import images
from maskflow.infra.domain.formats import (CorruptImage, EmptyImage, ImageRejected, TooManyPixels,
                                           TruncatedImage, UnsupportedFormat, image_info, sniff_format)
from maskflow.infra.domain.images import decode_image, encode_cutout_png, encode_mask_png

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PHOTOS = os.path.join(ROOT, "tests", "fixtures", "photos")


def pattern(h=23, w=37) -> np.ndarray:
    """Asymmetric RGB test image (no two orientations look alike)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 255 // (w - 1)), (y * 255 // (h - 1)), ((x + 2 * y) * 7) % 256], -1).astype(np.uint8)


def enc(ext: str, rgb_or_gray: np.ndarray, params=()) -> bytes:
    img = rgb_or_gray
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[:, :, ::-1]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, [2, 1, 0, 3]]
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)


def png_bomb(width: int, height: int) -> bytes:
    """Real, valid 8-bit grayscale PNG of zeros: tiny file, huge canvas."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * min(width, 16))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def animated_gif(frames: list[np.ndarray]) -> bytes:
    anim = cv2.Animation()
    anim.frames = [f[:, :, ::-1].copy() for f in frames]
    anim.durations = [100] * len(frames)
    ok, buf = cv2.imencodeanimation(".gif", anim)
    assert ok
    return buf.tobytes()


# ---------------------------------------------------------------- formats
ALL_FORMATS = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "bmp": ".bmp", "tiff": ".tiff", "gif": ".gif"}


@pytest.mark.parametrize("fmt,ext", ALL_FORMATS.items())
def test_sniff_and_header_dims_every_format(fmt, ext):
    data = enc(ext, pattern(23, 37))
    assert sniff_format(data) == fmt
    f, w, h, orient = image_info(data)
    assert (f, w, h, orient) == (fmt, 37, 23, 1)


@pytest.mark.parametrize("fmt,ext", ALL_FORMATS.items())
def test_decode_every_format_roundtrip(fmt, ext):
    src = pattern(23, 37)
    out = decode_image(enc(ext, src))
    assert out.shape == (23, 37, 3) and out.dtype == np.uint8
    if fmt in ("png", "bmp", "tiff"):
        assert np.array_equal(out, src)  # lossless: exact, and channel order is RGB
    elif fmt == "gif":  # palette quantisation
        assert np.abs(out.astype(int) - src).mean() < 25
    else:
        assert np.abs(out.astype(int) - src).mean() < 6


def test_webp_lossless_exact_and_channel_order():
    src = pattern(16, 16)
    out = decode_image(enc(".webp", src, [cv2.IMWRITE_WEBP_QUALITY, 101]))
    assert np.array_equal(out, src)


def test_sniff_rejects_non_images():
    assert sniff_format(b"hello world, this is text\n") is None
    assert sniff_format(b"%PDF-1.7 ...") is None
    assert sniff_format(b"") is None


# ---------------------------------------------------------------- normalisation
def test_grayscale_becomes_three_equal_channels():
    gray = pattern(20, 30)[:, :, 0]
    out = decode_image(enc(".png", gray))
    assert out.shape == (20, 30, 3)
    for c in range(3):
        assert np.array_equal(out[:, :, c], gray)


def test_16bit_png_scaled_to_8bit():
    vals = np.array([[0, 257, 65535, 32896, 1000, 65280]], np.uint16)
    data = enc(".png", vals)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    out = decode_image(data)
    assert out[0, :, 0].tolist() == [0, 1, 255, 128, 4, 254]


def test_16bit_rgb_tiff_scaled():
    rgb16 = (pattern(8, 9).astype(np.uint16) * 257)
    out = decode_image(enc(".tiff", rgb16))
    assert np.array_equal(out, pattern(8, 9))


def test_alpha_is_composited_on_white():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 10, 50)
    rgba[0, :, 3] = [0, 255, 128]
    rgba[1, :, 3] = 255
    out = decode_image(enc(".png", rgba))
    assert out[0, 0].tolist() == [255, 255, 255]  # fully transparent -> white
    assert out[0, 1].tolist() == [200, 10, 50]  # opaque -> unchanged
    expected = [round((v * 128 + 255 * 127) / 255) for v in (200, 10, 50)]
    assert np.abs(out[0, 2].astype(int) - expected).max() <= 1
    assert np.array_equal(out[1], np.tile([200, 10, 50], (3, 1)))


def test_rgba_fixture_photo_has_white_background():
    with open(os.path.join(PHOTOS, "astronaut_rgba.png"), "rb") as f:
        data = f.read()
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert raw.shape[2] == 4 and (raw[:, :, 3] == 0).any()
    out = decode_image(data)
    assert (out[raw[:, :, 3] == 0] == 255).all()


def test_cmyk_jpeg_converted_to_rgb():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(buf, "JPEG", quality=95)  # pure red in CMYK
    out = decode_image(buf.getvalue())
    assert out.shape == (10, 20, 3)
    r, g, b = out[5, 10].astype(int)
    assert r > 230 and g < 25 and b < 25


# ---------------------------------------------------------------- EXIF orientation
UPRIGHT = {  # orientation -> how the camera stored an upright picture
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, 1),   # display = rotate 90 CW
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, -1),  # display = rotate 90 CCW
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg_matches_opencv(orientation):
    # independent oracle: OpenCV's own EXIF handling in IMREAD_COLOR mode
    up = pattern(24, 40)
    stored = np.ascontiguousarray(UPRIGHT[orientation](up))
    data = jpeg_with_orientation(enc(".jpg", stored, [cv2.IMWRITE_JPEG_QUALITY, 100]), orientation)
    assert image_info(data)[3] == orientation
    ours = decode_image(data)
    theirs = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert ours.shape == (24, 40, 3)
    assert np.array_equal(ours, theirs)
    assert np.abs(ours.astype(int) - up).mean() < 8  # JPEG loss on a busy pattern


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_png_exif_chunk(orientation):
    up = pattern(24, 40)
    stored = np.ascontiguousarray(UPRIGHT[orientation](up))
    data = enc(".png", stored)
    data = data[:33] + png_chunk(b"eXIf", exif_tiff(orientation)) + data[33:]  # after IHDR
    assert np.array_equal(decode_image(data), up)


def test_exif_rotated_fixture_photo_is_upright():
    with open(os.path.join(PHOTOS, "astronaut_exif6.jpg"), "rb") as f:
        rotated = decode_image(f.read())
    with open(os.path.join(PHOTOS, "astronaut.jpg"), "rb") as f:
        full = decode_image(f.read())
    assert rotated.shape == (400, 300, 3)
    assert np.abs(rotated.astype(int) - full[0:400, 60:360]).mean() < 4


# ---------------------------------------------------------------- animation
def test_animated_gif_first_frame():
    frames = [np.full((16, 20, 3), c, np.uint8) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    data = animated_gif(frames)
    ok, all_frames = cv2.imdecodemulti(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert ok and len(all_frames) == 3
    out = decode_image(data)
    assert out.shape == (16, 20, 3)
    # GIF palette quantisation shifts levels a little; the frame must be red
    assert (out[:, :, 0] > 200).all() and (out[:, :, 1:] < 20).all()


# ---------------------------------------------------------------- limits
@pytest.mark.parametrize("ext", ALL_FORMATS.values())
def test_pixel_limit_from_header_every_format(ext):
    data = enc(ext, pattern(23, 37))
    assert decode_image(data, max_pixels=23 * 37).shape == (23, 37, 3)  # limit is inclusive
    with pytest.raises(TooManyPixels) as ei:
        decode_image(data, max_pixels=23 * 37 - 1)
    assert "37x23" in str(ei.value)


def test_header_claiming_60000x60000_rejected_before_decode():
    data = png_header_only(60000, 60000)
    with pytest.raises(TooManyPixels) as ei:
        decode_image(data)
    assert ei.value.width == 60000 and ei.value.height == 60000
    assert "3600.0 MP" in str(ei.value) and "40.0 MP" in str(ei.value)


def test_real_decompression_bomb_rejected():
    data = png_bomb(12000, 12000)  # 144 MP of zeros in a few hundred KB
    assert len(data) < 600_000
    with pytest.raises(TooManyPixels):
        decode_image(data)


# ---------------------------------------------------------------- rejections
def test_empty_and_text_and_unknown():
    with pytest.raises(EmptyImage):
        decode_image(b"")
    with pytest.raises(UnsupportedFormat) as ei:
        decode_image(b"just some text\nnot an image\n")
    assert "JPEG" in str(ei.value)
    with pytest.raises(UnsupportedFormat):
        decode_image(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 100)


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp", ".tiff", ".gif"])
def test_truncated_files_rejected(ext):
    data = enc(ext, pattern(64, 64), [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else [])
    cut = data[: int(len(data) * 0.6)]
    with pytest.raises(TruncatedImage):
        decode_image(cut)


@pytest.mark.parametrize("progressive", [0, 1])
@pytest.mark.parametrize("frac", [0.2, 0.5, 0.99])
def test_truncated_jpeg_photo_rejected(progressive, frac):
    # detected by our marker walk, whatever OpenCV's libjpeg would do with it
    with open(os.path.join(PHOTOS, "astronaut.jpg"), "rb") as f:
        rgb = decode_image(f.read())
    data = enc(".jpg", rgb, [cv2.IMWRITE_JPEG_PROGRESSIVE, progressive])
    cut = data[: int(len(data) * frac)]
    with pytest.raises(TruncatedImage) as ei:
        decode_image(cut)
    assert "EOI" in str(ei.value)


def test_jpeg_with_trailing_bytes_after_eoi_accepted():
    data = enc(".jpg", pattern())
    assert decode_image(data + b"\x00" * 10 + b"trailer").shape == (23, 37, 3)


def test_corrupt_png_bad_crc():
    data = bytearray(enc(".png", pattern(32, 32)))
    idat = data.find(b"IDAT")
    data[idat + 10] ^= 0xFF
    with pytest.raises(CorruptImage) as ei:
        decode_image(bytes(data))
    assert "CRC" in str(ei.value)


def test_corrupt_jpeg_garbage_body():
    rng = np.random.default_rng(0)
    data = b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    with pytest.raises(CorruptImage):  # TruncatedImage is a CorruptImage too
        decode_image(data)


def test_corrupt_png_missing_ihdr():
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IEND", b"")
    with pytest.raises(CorruptImage) as ei:
        decode_image(data)
    assert "IHDR" in str(ei.value)


def test_all_rejections_share_base_and_readable_message():
    cases = [b"", b"text", b"\x89PNG\r\n\x1a\n\x00\x00", png_header_only(60000, 60000)]
    for data in cases:
        with pytest.raises(ImageRejected) as ei:
            decode_image(data)
        msg = str(ei.value)
        assert msg and "\n" not in msg and "Traceback" not in msg
        assert ei.value.reason


# ---------------------------------------------------------------- acceptance 4 + memory
ACCEPTANCE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from maskflow.infra.domain.formats import ImageRejected
    from maskflow.infra.domain.images import decode_image
    results = {}
    for name, path in json.loads(sys.argv[2]).items():
        data = open(path, "rb").read()
        try:
            img = decode_image(data)
            results[name] = ["ok", list(img.shape), img[0, 0].tolist()]
        except ImageRejected as exc:
            results[name] = [type(exc).__name__, str(exc)]
    # VmHWM, not ru_maxrss: Linux carries the parent's (pytest's) peak into a child's
    # ru_maxrss across exec, which would measure the test runner instead of the decoder.
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    results["maxrss_mb"] = int(hwm.split()[1]) / 1024
    print(json.dumps(results))
    """
)


def test_acceptance_bad_inputs_and_peak_memory(tmp_path):
    with open(os.path.join(PHOTOS, "astronaut.jpg"), "rb") as f:
        jpeg = f.read()
    good = bytearray(enc(".png", pattern(64, 64)))
    good[len(good) // 2] ^= 0x55
    files = {
        "corrupt": bytes(good),
        "zero_byte": b"",
        "text": b"name,value\nfoo,1\n" * 20,
        "png_60000": png_header_only(60000, 60000),
        "bomb": png_bomb(12000, 12000),
        "truncated_jpeg": jpeg[: len(jpeg) * 2 // 3],
        "animated_gif": animated_gif([np.full((30, 40, 3), c, np.uint8) for c in ((0, 0, 250), (250, 250, 0))]),
    }
    paths = {}
    for name, data in files.items():
        p = tmp_path / name
        p.write_bytes(data)
        paths[name] = str(p)
    proc = subprocess.run([sys.executable, "-c", ACCEPTANCE_SCRIPT, ROOT, json.dumps(paths)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["corrupt"][0] == "CorruptImage"
    assert res["zero_byte"][0] == "EmptyImage"
    assert res["text"][0] == "UnsupportedFormat"
    assert res["png_60000"][0] == "TooManyPixels"
    assert res["bomb"][0] == "TooManyPixels"
    assert res["truncated_jpeg"][0] == "TruncatedImage"
    assert res["animated_gif"][0] == "ok" and res["animated_gif"][1] == [30, 40, 3]
    assert res["animated_gif"][2][2] > 200 and res["animated_gif"][2][0] < 40  # first frame is blue
    assert res["maxrss_mb"] < 300, res["maxrss_mb"]


# ---------------------------------------------------------------- encoding
@pytest.fixture(params=["isal", "opencv"])
def mask_encoder(request, monkeypatch):
    """encode_mask_png as served (ISA-L) and as its fallback (OpenCV) writes it."""
    if request.param == "isal":
        assert images.isal_zlib is not None, "the worker extra needs isal; it must be installed"
    else:
        monkeypatch.setattr(images, "isal_zlib", None)
    return encode_mask_png


def _gray_both_decoders(data: bytes) -> list[np.ndarray]:
    """Gray pixels as libpng (OpenCV) and Pillow's own PNG decoder read them."""
    with PIL.Image.open(io.BytesIO(data)) as im:
        assert im.mode == "L"
        pil = np.asarray(im)
    return [cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), pil]


def test_encode_mask_png_is_8bit_gray_and_lossless(mask_encoder):
    mask = (pattern(50, 70)[:, :, 0]).copy()
    data = mask_encoder(mask)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, ctype = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth, ctype) == (70, 50, 8, 0)  # colour type 0 = grayscale
    for back in _gray_both_decoders(data):
        assert np.array_equal(back, mask)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(height=st.integers(1, 80), width=st.integers(1, 80), seed=st.integers(0, 2**32 - 1),
       flat=st.floats(0, 1))
def test_mask_decodes_to_the_same_pixels_with_either_encoder(mask_encoder, height, width, seed, flat):
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 256, (height, width), np.uint8)
    mask[rng.random((height, width)) < flat] = 255
    for back in _gray_both_decoders(mask_encoder(mask)):
        assert np.array_equal(back, mask)


def test_mask_of_a_real_photo_is_the_same_with_either_encoder(mask_encoder):
    """The model's mask of a photo, and a view of it (as a crop gives): pixels unchanged."""
    from maskflow.infra.domain.segmenter import Segmenter

    with open(os.path.join(PHOTOS, "coffee.jpg"), "rb") as f:
        rgb = decode_image(f.read())
    mask = Segmenter.load(os.path.join(ROOT, "models", "segmentation.onnx")).predict(rgb)
    for view in (mask, mask[10:-20, 30:-5], mask[:, :1], mask[:1]):
        for back in _gray_both_decoders(mask_encoder(view)):
            assert np.array_equal(back, view)


def test_encode_cutout_png_is_rgba_with_mask_alpha():
    rgb = pattern(50, 70)
    mask = np.zeros((50, 70), np.uint8)
    mask[10:40, 20:60] = 255
    mask[0, 0] = 77
    data = encode_cutout_png(rgb, mask)
    width, height, depth, ctype = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth, ctype) == (70, 50, 8, 6)  # colour type 6 = RGBA
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(back[:, :, 3], mask)
    visible = mask > 0
    assert np.array_equal(back[:, :, 2::-1][visible], rgb[visible])
    assert not back[~visible].any(), "pixels under alpha 0 are stored as zero"


def test_encode_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        encode_cutout_png(pattern(10, 10), np.zeros((10, 11), np.uint8))
    with pytest.raises(ValueError):
        encode_mask_png(np.zeros((10, 10), np.float32))


@pytest.fixture(params=["fpng", "opencv"])
def cutout_encoder(request, monkeypatch):
    """encode_cutout_png as served (fpng) and as its fallback (OpenCV) writes it."""
    if request.param == "fpng":
        assert images.fpng is not None, "the worker extra pins fpng; it must be installed"
    else:
        monkeypatch.setattr(images, "fpng", None)
    return encode_cutout_png


def _both_decoders(data: bytes) -> list[np.ndarray]:
    """RGBA pixels as libpng (OpenCV) and Pillow's own PNG decoder read them."""
    bgra = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    with PIL.Image.open(io.BytesIO(data)) as im:
        assert im.mode == "RGBA"
        pil = np.asarray(im)
    return [bgra[:, :, [2, 1, 0, 3]], pil]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(height=st.integers(1, 80), width=st.integers(1, 80), seed=st.integers(0, 2**32 - 1),
       hidden=st.floats(0, 1))
def test_cutout_decodes_to_the_photo_where_visible_and_zero_elsewhere(cutout_encoder, height, width,
                                                                      seed, hidden):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), np.uint8)
    mask = rng.integers(0, 256, (height, width), np.uint8)
    mask[rng.random((height, width)) < hidden] = 0
    visible = mask > 0
    for back in _both_decoders(cutout_encoder(rgb, mask)):
        assert back.shape == (height, width, 4)
        assert np.array_equal(back[:, :, 3], mask)
        assert np.array_equal(back[:, :, :3][visible], rgb[visible])
        assert not back[~visible].any()


def test_cutout_of_a_real_photo_with_either_encoder(cutout_encoder):
    with open(os.path.join(PHOTOS, "coffee.jpg"), "rb") as f:
        rgb = decode_image(f.read())
    mask = np.zeros(rgb.shape[:2], np.uint8)
    mask[50:300, 100:500] = np.linspace(0, 255, 400, dtype=np.uint8)
    for back in _both_decoders(cutout_encoder(rgb, mask)):
        assert np.array_equal(back, images.cutout_rgba(rgb, mask))
