"""Generate the parity fixtures in tests/fixtures/ (photos + reference outputs).

The references come from the upstream pipelines themselves, each run in its own
virtualenv OUTSIDE the repo (never install mediapipe/rembg into .venv):

    # 0. sample photos from scikit-image's bundled data (re-encoded small)
    .venv/bin/pip download --no-deps scikit-image==0.26.0 -d /tmp/wheels
    .venv/bin/python models/make_parity_fixtures.py photos --skimage-wheel /tmp/wheels/scikit_image-0.26.0-*.whl

    # 1. decode them with OUR decoder (infra/domain/images.py) so both sides see the same RGB
    .venv/bin/python models/make_parity_fixtures.py decode --inputs /tmp/parity_inputs.npz

    # 2. MediaPipe reference: mp.solutions.selfie_segmentation, model_selection=0
    python3.11 -m venv /tmp/mpenv && /tmp/mpenv/bin/pip install mediapipe==0.10.14
    /tmp/mpenv/bin/python models/make_parity_fixtures.py mediapipe --inputs /tmp/parity_inputs.npz

    # 3. rembg references (u2netp, u2net), model files pre-placed so nothing is downloaded
    python3.11 -m venv /tmp/rbenv && /tmp/rbenv/bin/pip install "rembg[cpu]==2.0.86"
    mkdir -p /tmp/u2home && cp models/u2netp.onnx ~/.cache/maskflow/models/u2net.onnx /tmp/u2home/
    U2NET_HOME=/tmp/u2home /tmp/rbenv/bin/python models/make_parity_fixtures.py rembg --inputs /tmp/parity_inputs.npz
    U2NET_HOME=/tmp/u2home /tmp/rbenv/bin/python models/make_parity_fixtures.py rembg --model u2net --inputs /tmp/parity_inputs.npz

    # 5. rembg's HTTP server (rembg s), sent the curl forms of rembg's README: its answers
    .venv/bin/python models/make_parity_fixtures.py rembg-server --rembg /tmp/rbenv/bin/rembg --u2net-home /tmp/u2home

    # 4. MODNet reference: its official ONNX inference, run with onnxruntime and OpenCV alone
    /tmp/rbenv/bin/python models/make_parity_fixtures.py modnet --model ~/.cache/maskflow/models/modnet.onnx --inputs /tmp/parity_inputs.npz

Outputs (tests/fixtures/parity/; step 5 writes tests/fixtures/rembg_server/<photo>.<form>.png): <name>.mediapipe.npz (probability as uint16,
p*65535 rounded, at the photo's resolution), <name>.rembg_u2netp.npz and
<name>.rembg_u2net.npz (rembg's uint8 masks), <name>.modnet.npz (MODNet's uint8
matte), and index.json (photo list, person flag, sha256 of the decoded RGB
so the test can tell a decoder change from a model change, tool versions).
Steps 2 to 4 need only numpy plus the upstream package (or onnxruntime and OpenCV): no
repo imports.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
PHOTOS = os.path.join(FIXTURES, "photos")
PARITY = os.path.join(FIXTURES, "parity")
INDEX = os.path.join(PARITY, "index.json")

# name -> (has a person, what it exercises)
PHOTO_SET = {
    "astronaut.jpg": (True, "RGB JPEG, 512x512 (skimage astronaut)"),
    "camera_gray.png": (True, "8-bit grayscale PNG, 512x512 (skimage camera)"),
    "astronaut_exif6.jpg": (True, "JPEG stored rotated with EXIF orientation 6, crop of astronaut"),
    "chelsea.jpg": (False, "cat, no person"),
    "coffee.jpg": (False, "coffee cup, no person"),
    "rocket.jpg": (False, "rocket launch, no person"),
    "astronaut_rgba.png": (True, "RGBA PNG: astronaut at 256x256 with a soft elliptical alpha cut-out"),
    "motorcycle.jpg": (False, "motorcycle, no person (skimage motorcycle_left)"),
}


def _exif_orientation_app1(orientation: int) -> bytes:
    """Minimal APP1 Exif segment with one IFD0 entry: Orientation (274)."""
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 274, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def make_photos(wheel: str) -> None:
    import cv2

    os.makedirs(PHOTOS, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        def load(name, flags=cv2.IMREAD_UNCHANGED):
            return cv2.imdecode(np.frombuffer(zf.read("skimage/data/" + name), np.uint8), flags)
        jpg = [cv2.IMWRITE_JPEG_QUALITY, 90]
        astro = load("astronaut.png")
        cv2.imwrite(os.path.join(PHOTOS, "astronaut.jpg"), astro, jpg)
        cam = load("camera.png")
        assert cam.ndim == 2
        cv2.imwrite(os.path.join(PHOTOS, "camera_gray.png"), cam, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        # upright crop (head and shoulders), stored rotated 90 deg CCW + EXIF 6
        upright = astro[0:400, 60:360]
        stored = np.ascontiguousarray(np.rot90(upright, 1))
        ok, enc = cv2.imencode(".jpg", stored, jpg)
        data = enc.tobytes()
        data = data[:2] + _exif_orientation_app1(6) + data[2:]
        with open(os.path.join(PHOTOS, "astronaut_exif6.jpg"), "wb") as f:
            f.write(data)
        cv2.imwrite(os.path.join(PHOTOS, "chelsea.jpg"), load("chelsea.png"), jpg)
        cv2.imwrite(os.path.join(PHOTOS, "coffee.jpg"), load("coffee.png"), jpg)
        cv2.imwrite(os.path.join(PHOTOS, "rocket.jpg"), load("rocket.jpg"), [cv2.IMWRITE_JPEG_QUALITY, 85])
        cv2.imwrite(os.path.join(PHOTOS, "motorcycle.jpg"), load("motorcycle_left.png"), jpg)
        # skimage has no photo with real transparency: give one a soft elliptical alpha
        small = cv2.resize(astro, (256, 256), interpolation=cv2.INTER_AREA)
        y, x = np.mgrid[0:256, 0:256]
        r = np.sqrt(((x - 128) / 110.0) ** 2 + ((y - 140) / 125.0) ** 2)
        alpha = np.clip((1.1 - r) * 5 * 255, 0, 255).astype(np.uint8)
        cv2.imwrite(os.path.join(PHOTOS, "astronaut_rgba.png"), np.dstack([small, alpha]),
                    [cv2.IMWRITE_PNG_COMPRESSION, 9])
    for name in PHOTO_SET:
        print(name, os.path.getsize(os.path.join(PHOTOS, name)), "bytes")


def decode(inputs: str) -> None:
    sys.path.insert(0, ROOT)
    from maskflow.infra.domain.images import decode_image

    arrays = {}
    index = {"photos": {}}
    for name, (person, note) in PHOTO_SET.items():
        with open(os.path.join(PHOTOS, name), "rb") as f:
            rgb = decode_image(f.read())
        arrays[name] = rgb
        index["photos"][name] = {"person": person, "note": note, "shape": list(rgb.shape),
                                 "rgb_sha256": hashlib.sha256(rgb.tobytes()).hexdigest()}
    np.savez(inputs, **arrays)
    os.makedirs(PARITY, exist_ok=True)
    old = json.load(open(INDEX)) if os.path.exists(INDEX) else {}
    old.update(index)
    with open(INDEX, "w") as f:
        json.dump(old, f, indent=2, sort_keys=True)
    print("decoded", len(arrays), "photos ->", inputs)


def _record_tool(key: str, value: dict) -> None:
    idx = json.load(open(INDEX))
    idx.setdefault("tools", {})[key] = value
    with open(INDEX, "w") as f:
        json.dump(idx, f, indent=2, sort_keys=True)


def run_mediapipe(inputs: str) -> None:
    import mediapipe as mp

    data = np.load(inputs)
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        for name in PHOTO_SET:
            rgb = np.ascontiguousarray(data[name])
            prob = seg.process(rgb).segmentation_mask
            assert prob.shape == rgb.shape[:2], (name, prob.shape)
            q = np.round(np.clip(prob, 0, 1) * 65535).astype(np.uint16)
            np.savez_compressed(os.path.join(PARITY, name + ".mediapipe.npz"), prob=q)
            print(name, "mediapipe mean prob %.4f" % prob.mean())
    _record_tool("mediapipe", {"version": mp.__version__, "api": "mp.solutions.selfie_segmentation",
                               "model_selection": 0, "numpy": np.__version__})


def run_rembg(inputs: str, model: str) -> None:
    import rembg
    from PIL import Image

    home = os.environ.get("U2NET_HOME")
    if not home or not os.path.exists(os.path.join(home, f"{model}.onnx")):
        raise SystemExit(f"set U2NET_HOME to a directory holding {model}.onnx (no downloads wanted)")
    session = rembg.new_session(model)
    data = np.load(inputs)
    for name in PHOTO_SET:
        rgb = np.ascontiguousarray(data[name])
        mask = rembg.remove(Image.fromarray(rgb), session=session, only_mask=True)
        mask = np.asarray(mask)
        assert mask.shape == rgb.shape[:2] and mask.dtype == np.uint8, (name, mask.shape, mask.dtype)
        np.savez_compressed(os.path.join(PARITY, f"{name}.rembg_{model}.npz"), mask=mask)
        print(name, "rembg mean mask %.2f" % mask.mean())
    import importlib.metadata as md
    _record_tool("rembg" if model == "u2netp" else f"rembg_{model}",
                 {"version": md.version("rembg"), "session": model, "call": "remove(only_mask=True)",
                  "pillow": md.version("pillow"), "onnxruntime": md.version("onnxruntime")})


def _modnet_scale(im_h: int, im_w: int, ref_size: int) -> tuple[float, float]:
    # MODNet's onnx/inference_onnx.py get_scale_factor, as published
    if max(im_h, im_w) < ref_size or min(im_h, im_w) > ref_size:
        if im_w >= im_h:
            im_rh, im_rw = ref_size, int(im_w / im_h * ref_size)
        else:
            im_rw, im_rh = ref_size, int(im_h / im_w * ref_size)
    else:
        im_rh, im_rw = im_h, im_w
    im_rw, im_rh = im_rw - im_rw % 32, im_rh - im_rh % 32
    return im_rw / im_w, im_rh / im_h


def run_modnet(inputs: str, model: str) -> None:
    """MODNet's official ONNX inference (onnx/inference_onnx.py), on our decoded RGB."""
    import cv2
    import onnxruntime

    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    data = np.load(inputs)
    for name in PHOTO_SET:
        im = (np.ascontiguousarray(data[name]) - 127.5) / 127.5
        im_h, im_w, _ = im.shape
        x, y = _modnet_scale(im_h, im_w, 512)
        im = cv2.resize(im, None, fx=x, fy=y, interpolation=cv2.INTER_AREA)
        im = np.expand_dims(np.swapaxes(np.transpose(im), 1, 2), axis=0).astype("float32")
        matte = session.run([session.get_outputs()[0].name], {session.get_inputs()[0].name: im})[0]
        matte = (np.squeeze(matte) * 255).astype("uint8")
        matte = cv2.resize(matte, dsize=(im_w, im_h), interpolation=cv2.INTER_AREA)
        np.savez_compressed(os.path.join(PARITY, f"{name}.modnet.npz"), matte=matte)
        print(name, "modnet mean matte %.2f" % matte.mean())
    import importlib.metadata as md
    _record_tool("modnet", {"recipe": "MODNet onnx/inference_onnx.py (ref_size 512)",
                            "onnxruntime": md.version("onnxruntime"), "opencv": cv2.__version__,
                            "model_sha256": hashlib.sha256(open(model, "rb").read()).hexdigest()})


# rembg's README's curl forms, each with model=u2net (rembg 2.0.86 defaults to bria-rmbg):
# name -> (form fields, query)
SERVER_FORMS = {
    "plain": ({}, ""),
    "a": ({"a": "true"}, ""),
    "om": ({"om": "true"}, ""),
    "ppm": ({"ppm": "true"}, ""),
    "dc": ({"dc": "true"}, ""),
    "bgc": ({}, "bgc=255,0,0,255"),
}
SERVER_PHOTOS = ("astronaut.jpg", "coffee.jpg")


def run_rembg_server(rembg: str, u2net_home: str) -> None:
    """Start `rembg s` on a free loopback port and keep its answer to every form and photo."""
    import socket
    import subprocess
    import time
    import urllib3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "U2NET_HOME": u2net_home}
    server = subprocess.Popen([rembg, "s", "--host", "127.0.0.1", "--port", str(port), "--no-ui"], env=env)
    http = urllib3.PoolManager()
    out = os.path.join(FIXTURES, "rembg_server")
    os.makedirs(out, exist_ok=True)
    try:
        for _ in range(600):  # its first start imports a lot: wait up to a minute
            try:
                http.request("GET", f"http://127.0.0.1:{port}/docs", timeout=1, retries=False)
                break
            except urllib3.exceptions.HTTPError:
                time.sleep(0.1)
        for photo in SERVER_PHOTOS:
            with open(os.path.join(PHOTOS, photo), "rb") as f:
                data = f.read()
            for name, (fields, query) in SERVER_FORMS.items():
                url = f"http://127.0.0.1:{port}/api/remove" + (f"?{query}" if query else "")
                body = [("model", "u2net"), *fields.items(), ("file", (photo, data, "image/jpeg"))]
                r = http.request("POST", url, fields=body, timeout=600, retries=False)
                assert r.status == 200, (photo, name, r.status, r.data[:200])
                with open(os.path.join(out, f"{photo}.{name}.png"), "wb") as f:
                    f.write(r.data)
                print(photo, name, len(r.data), "bytes")
    finally:
        server.terminate()
        server.wait(30)
    version = subprocess.run([rembg, "--version"], capture_output=True, text=True).stdout.strip()
    _record_tool("rembg_server", {"version": version, "forms": {k: [v[0], v[1]] for k, v in SERVER_FORMS.items()},
                                  "model": "u2net", "photos": list(SERVER_PHOTOS)})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="parity fixtures (see module docstring)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("photos")
    p.add_argument("--skimage-wheel", required=True)
    for cmd in ("decode", "mediapipe", "rembg", "modnet"):
        q = sub.add_parser(cmd)
        q.add_argument("--inputs", default="/tmp/parity_inputs.npz")
        if cmd == "rembg":
            q.add_argument("--model", choices=("u2netp", "u2net"), default="u2netp")
        if cmd == "modnet":
            q.add_argument("--model", required=True, help="modnet.onnx")
    q = sub.add_parser("rembg-server")
    q.add_argument("--rembg", required=True, help="the rembg command of a venv with rembg[cli]==2.0.86")
    q.add_argument("--u2net-home", required=True, help="a directory holding u2net.onnx")
    args = ap.parse_args(argv)
    if args.cmd == "rembg-server":
        run_rembg_server(args.rembg, args.u2net_home)
    elif args.cmd == "photos":
        make_photos(args.skimage_wheel)
    elif args.cmd == "decode":
        decode(args.inputs)
    elif args.cmd == "mediapipe":
        run_mediapipe(args.inputs)
    elif args.cmd == "modnet":
        run_modnet(args.inputs, args.model)
    else:
        run_rembg(args.inputs, args.model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
