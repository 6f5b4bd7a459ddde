"""infra/domain/segmenter.py: manifest contract, loader checks, pre/post-processing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading

import cv2
import numpy as np
import pytest

from maskflow.infra.domain.segmenter import (ModelError, ModelManifest, Segmenter, mediapipe_warp,
                                             pil_lanczos_resize)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "models")
SELFIE = os.path.join(MODELS, "segmentation.onnx")
U2NETP = os.path.join(MODELS, "u2netp.onnx")
rng = np.random.default_rng(7)


def copy_model(tmp_path, src=SELFIE, **manifest_changes):
    """Copy a model + manifest into tmp_path, applying manifest edits."""
    dst = tmp_path / os.path.basename(src)
    shutil.copy(src, dst)
    with open(os.path.splitext(src)[0] + ".json") as f:
        man = json.load(f)
    man.update(manifest_changes)
    (tmp_path / (dst.stem + ".json")).write_text(json.dumps(man))
    return str(dst)


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---------------------------------------------------------------- manifest + loader
def test_manifests_describe_their_models():
    for path in (SELFIE, U2NETP):
        m = ModelManifest.from_json(os.path.splitext(path)[0] + ".json")
        assert m.file == os.path.basename(path)
        assert m.sha256 == sha256(path)
        assert m.license.startswith("Apache-2.0") and m.source


def test_load_default_model(person_model):
    m = person_model.manifest
    assert (m.input_name, m.layout, m.input_height, m.input_width) == ("image", "NHWC", 256, 256)
    assert m.output_kind == "probability" and person_model.fixed_batch is None
    assert person_model.input_size == (256, 256)


def test_sha256_mismatch_names_file(tmp_path):
    path = copy_model(tmp_path, sha256="0" * 64)
    with pytest.raises(ModelError) as ei:
        Segmenter.load(path)
    assert "segmentation.onnx" in str(ei.value) and "sha256" in str(ei.value)


def test_tampered_model_detected(tmp_path):
    path = copy_model(tmp_path)
    with open(path, "r+b") as f:
        f.seek(-10, os.SEEK_END)
        f.write(b"\x00" * 4)
    with pytest.raises(ModelError, match="does not match manifest"):
        Segmenter.load(path)


def test_declared_input_size_must_match_graph(tmp_path):
    path = copy_model(tmp_path, input_height=320, input_width=320)
    with pytest.raises(ModelError) as ei:
        Segmenter.load(path)
    assert "[" in str(ei.value) and "320x320x3" in str(ei.value)


def test_declared_layout_must_match_graph(tmp_path):
    path = copy_model(tmp_path, layout="NCHW")
    with pytest.raises(ModelError, match="NCHW"):
        Segmenter.load(path)


def test_declared_input_and_output_names_must_exist(tmp_path):
    with pytest.raises(ModelError, match="'pixels' not in graph inputs"):
        Segmenter.load(copy_model(tmp_path, input_name="pixels"))
    (tmp_path / "b").mkdir()
    with pytest.raises(ModelError, match="'mask' not in graph outputs"):
        Segmenter.load(copy_model(tmp_path / "b", output_name="mask"))


def test_missing_manifest_and_model(tmp_path):
    shutil.copy(SELFIE, tmp_path / "segmentation.onnx")
    with pytest.raises(ModelError, match="manifest not found"):
        Segmenter.load(str(tmp_path / "segmentation.onnx"))
    with pytest.raises(ModelError, match="model file not found"):
        Segmenter.load(str(tmp_path / "nope.onnx"))


def test_manifest_missing_field_and_bad_enum(tmp_path):
    d = json.load(open(os.path.join(MODELS, "segmentation.json")))
    del d["output_name"]
    with pytest.raises(ModelError, match="output_name"):
        ModelManifest.from_dict(d)
    d = json.load(open(os.path.join(MODELS, "segmentation.json")))
    d["resize"] = "magic"
    with pytest.raises(ModelError, match="resize='magic'"):
        ModelManifest.from_dict(d)


def test_config_input_size_must_equal_manifest():
    assert Segmenter.load(SELFIE, input_size=256).input_size == (256, 256)
    assert Segmenter.load(SELFIE, input_size=[256, 256]).input_size == (256, 256)
    with pytest.raises(ModelError) as ei:
        Segmenter.load(SELFIE, input_size=320)
    assert "input_size" in str(ei.value) and "256x256" in str(ei.value)


def test_session_options_are_applied():
    s = Segmenter.load(SELFIE, intra_op_threads=2, inter_op_threads=1, optimization_level="basic")
    assert s.session.get_session_options().intra_op_num_threads == 2
    with pytest.raises(ModelError, match="optimization_level"):
        Segmenter.load(SELFIE, optimization_level="turbo")


# ---------------------------------------------------------------- pre/post-processing
def test_mediapipe_warp_is_corner_aligned_bilinear():
    # tensor pixel (u, v) samples the image at (u * W/out, v * H/out): corner-aligned,
    # not pixel-centre aligned as cv2.resize would be
    img = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    out = mediapipe_warp(img, 32, 24).astype(np.float64)
    src = img.astype(np.float64)
    v, u = np.mgrid[0:24, 0:32]
    x, y = u * 90 / 32, v * 60 / 24
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, 89), np.minimum(y0 + 1, 59)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    ref = (src[y0, x0] * (1 - fx) * (1 - fy) + src[y0, x1] * fx * (1 - fy)
           + src[y1, x0] * (1 - fx) * fy + src[y1, x1] * fx * fy)
    assert np.abs(out - ref).max() <= 2  # OpenCV uses 1/32-pixel fixed point weights
    half_pixel = cv2.resize(img, (32, 24), interpolation=cv2.INTER_LINEAR).astype(np.float64)
    assert np.abs(half_pixel - ref).mean() > 5 * np.abs(out - ref).mean()


class RunRecorder:
    """Stands in front of a real session: counts runs inside it at once, and can hold them."""

    def __init__(self, session, inside: threading.Barrier | None = None):
        self.session, self.inside = session, inside
        self.lock, self.now, self.most = threading.Lock(), 0, 0
        self.entered, self.release = threading.Event(), threading.Event()

    def run(self, *args):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        self.entered.set()
        try:
            if self.inside:
                self.inside.wait()  # every run must be inside together, or this breaks
            else:
                self.release.wait(10)
            return self.session.run(*args)
        finally:
            with self.lock:
                self.now -= 1


def test_models_of_a_process_share_their_run_slots(person_model):
    # One slot for two models: the second model's run waits for the first model's to end.
    slots = threading.BoundedSemaphore(1)
    person, other = Segmenter.load(SELFIE, run_slots=slots), Segmenter.load(SELFIE, run_slots=slots)
    first, second = RunRecorder(person.session), RunRecorder(other.session)
    person.session, other.session = first, second
    img = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    masks = {}
    a = threading.Thread(target=lambda: masks.setdefault("a", person.predict(img)))
    b = threading.Thread(target=lambda: masks.setdefault("b", other.predict(img)))
    a.start()
    assert first.entered.wait(10)
    b.start()
    b.join(0.3)
    assert not second.entered.is_set(), "a second run started while the only slot was taken"
    first.release.set()
    second.release.set()
    a.join(10)
    b.join(10)
    assert np.array_equal(masks["a"], masks["b"]) and np.array_equal(masks["a"], person_model.predict(img))


def test_more_run_slots_let_runs_overlap():
    seg = Segmenter.load(SELFIE, run_slots=threading.BoundedSemaphore(2))
    seg.session = recorder = RunRecorder(seg.session, threading.Barrier(2, timeout=10))
    img = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    threads = [threading.Thread(target=seg.predict, args=(img,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert recorder.most == 2 and not recorder.inside.broken


def test_preprocess_selfie_tensor(person_model):
    img = rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)
    x = person_model.preprocess(img)
    assert x.shape == (256, 256, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(x, mediapipe_warp(img, 256, 256).astype(np.float32) / 255)


def test_preprocess_u2netp_tensor():
    s = Segmenter.load(U2NETP)
    img = rng.integers(0, 200, (64, 80, 3), dtype=np.uint8)
    x = s.preprocess(img)
    assert x.shape == (3, 320, 320) and x.dtype == np.float32
    r = pil_lanczos_resize(img, 320, 320) / max(pil_lanczos_resize(img, 320, 320).max(), 1e-6)
    np.testing.assert_allclose(x[0], (r[:, :, 0] - 0.485) / 0.229, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x[2], (r[:, :, 2] - 0.406) / 0.225, rtol=1e-5, atol=1e-5)


def test_predict_output_at_input_resolution(person_model):
    img = rng.integers(0, 256, (123, 77, 3), dtype=np.uint8)
    mask = person_model.predict(img)
    assert mask.shape == (123, 77) and mask.dtype == np.uint8
    raw = person_model.infer(person_model.preprocess(img)[None])[0, :, :, 0]
    want = cv2.resize(raw, (77, 123), interpolation=cv2.INTER_LINEAR)
    assert np.abs(mask / 255.0 - want).max() <= 0.5 / 255 + 1e-6


def _clipped_mask(prob: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The mask as post-processing always made it: resize, clip to [0, 1], scale, truncate."""
    h, w = size
    full = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
    return (np.clip(full, 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)


@pytest.mark.parametrize("size", [(768, 1024), (1800, 2400), (123, 77), (256, 256)])
def test_masks_skip_no_clip_they_need(person_model, size):
    """An output already in [0, 1] is not clipped at full size: the same bytes as clipping.
    One that leaves [0, 1] (raw logits) still is."""
    shape = person_model.manifest.input_height, person_model.manifest.input_width  # its output too
    channels_last = person_model.manifest.output_layout == "NHWC"
    in_range = rng.random(shape, dtype=np.float32)
    in_range[::7, ::5] = 1.0  # edges where interpolation rounds past 1 or below 0 if it can
    in_range[3::7, 2::5] = 0.0
    in_range[:40] = 1.0
    logits = rng.normal(0.5, 2.0, shape).astype(np.float32)
    for prob in (in_range, logits):
        out = prob[:, :, None] if channels_last else prob[None]
        assert np.array_equal(person_model.postprocess(out, size), _clipped_mask(prob, size))


def test_predict_batch_equals_single(person_model):
    imgs = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in ((64, 64), (40, 90), (300, 200))]
    batch = person_model.predict_batch(imgs)
    for im, m in zip(imgs, batch):
        assert m.shape == im.shape[:2]
        assert np.abs(m.astype(int) - person_model.predict(im)).max() <= 1
    assert person_model.predict_batch([]) == []


def test_fixed_batch_model_handles_batches():
    s = Segmenter.load(U2NETP)
    assert s.fixed_batch == 1
    imgs = [rng.integers(0, 256, (50, 60, 3), dtype=np.uint8) for _ in range(2)]
    out = s.predict_batch(imgs)
    assert [m.shape for m in out] == [(50, 60), (50, 60)]
    assert np.array_equal(out[1], s.predict(imgs[1]))


def test_predict_rejects_wrong_input(person_model):
    with pytest.raises(ValueError):
        person_model.predict(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError):
        person_model.predict(np.zeros((10, 10, 3), np.float32))
