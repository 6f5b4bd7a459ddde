"""Fidelity against the upstream pipelines, using fixtures made once by
models/make_parity_fixtures.py (MediaPipe 0.10.14 and rembg, isolated venvs)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from checks import iou
from maskflow.infra.domain.images import decode_image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests", "fixtures")
with open(os.path.join(FIX, "parity", "index.json")) as _f:
    INDEX = json.load(_f)
PHOTOS = sorted(INDEX["photos"])


def load_rgb(name):
    with open(os.path.join(FIX, "photos", name), "rb") as f:
        return decode_image(f.read())


def ours_and_reference(model, name: str, fixture: str, array: str, scale: int):
    """Our probabilities for photo `name` and the upstream ones from its fixture, both 0..1."""
    ref = np.load(os.path.join(FIX, "parity", f"{name}.{fixture}"))[array].astype(np.float64) / scale
    ours = model.predict(load_rgb(name)).astype(np.float64) / 255
    assert ours.shape == ref.shape
    return ours, ref


def test_fixture_set_covers_required_cases():
    photos = INDEX["photos"]
    assert len(photos) >= 6
    assert sum(p["person"] for p in photos.values()) >= 2 and sum(not p["person"] for p in photos.values()) >= 2
    notes = " ".join(p["note"] for p in photos.values())
    assert "grayscale" in notes and "EXIF" in notes and "RGBA" in notes


@pytest.mark.parametrize("name", PHOTOS)
def test_decoder_unchanged_since_fixtures(name):
    rgb = load_rgb(name)
    assert hashlib.sha256(rgb.tobytes()).hexdigest() == INDEX["photos"][name]["rgb_sha256"], \
        "decode_image output changed; regenerate fixtures (models/make_parity_fixtures.py)"


@pytest.mark.parametrize("name", PHOTOS)
def test_selfie_matches_mediapipe(person_model, name):
    ours, ref = ours_and_reference(person_model, name, "mediapipe.npz", "prob", 65535)
    mad = np.abs(ours - ref).mean()
    assert mad <= 0.003, f"{name}: mean |p - p_mediapipe| = {mad:.5f}"
    if INDEX["photos"][name]["person"]:
        assert iou(ours, ref) >= 0.99, f"{name}: IoU {iou(ours, ref):.4f}"


@pytest.mark.parametrize("name", PHOTOS)
def test_u2netp_matches_rembg(general_model, name):
    ours, ref = ours_and_reference(general_model, name, "rembg_u2netp.npz", "mask", 255)
    assert iou(ours, ref) >= 0.99, f"{name}: IoU {iou(ours, ref):.4f}"


@pytest.mark.parametrize("name", PHOTOS)
def test_u2net_matches_rembg(u2net_model, name):
    # rembg 2.0.86, remove(..., session=new_session("u2net"), only_mask=True)
    ours, ref = ours_and_reference(u2net_model, name, "rembg_u2net.npz", "mask", 255)
    mad = np.abs(ours - ref).mean()
    assert iou(ours, ref) >= 0.999, f"{name}: IoU {iou(ours, ref):.5f}"
    assert mad <= 0.002, f"{name}: mean |m - m_rembg| = {mad:.5f}"


@pytest.mark.parametrize("name", PHOTOS)
def test_portrait_matches_modnet_and_stays_soft(portrait_model, name):
    # MODNet's official ONNX inference, run with onnxruntime and OpenCV alone
    ours, ref = ours_and_reference(portrait_model, name, "modnet.npz", "matte", 255)
    mad = np.abs(ours - ref).mean()
    assert mad <= 0.003, f"{name}: mean |a - a_modnet| = {mad:.5f}"
    if INDEX["photos"][name]["person"]:
        soft = ((ours > 0) & (ours < 1)).mean()
        assert soft >= 0.02, f"{name}: only {soft:.1%} of the matte is soft: thresholded?"
