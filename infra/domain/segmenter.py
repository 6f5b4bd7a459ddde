"""ONNX segmentation models behind one contract: a manifest JSON beside each model.

Pure compute (numpy, OpenCV, onnxruntime): no Redis/MinIO here.

    seg = Segmenter.load("models/segmentation.onnx")      # checks sha256 + graph
    mask = seg.predict(rgb)                               # H x W uint8, 0..255

The manifest (same stem + ".json", infra/domain/manifest.py) declares how to feed the model
and read its output; see models/README.md for the field list.  Anything that does not agree
with the ONNX graph is a ModelError at start-up, not a wrong mask later.
"""

from __future__ import annotations

import hashlib
import os
import threading

import cv2
import numpy as np
import onnxruntime as ort
from PIL import Image

from maskflow.infra.domain.manifest import ModelError, ModelManifest

OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --------------------------------------------------------------- resampling
def mediapipe_warp(rgb: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """MediaPipe ImageToTensorCalculator (OpenCV backend), full-image ROI:
    perspective warp mapping image corners to tensor corners, INTER_LINEAR on
    uint8, BORDER_REPLICATE."""
    h, w = rgb.shape[:2]
    src = np.float32([[0, h], [0, 0], [w, 0], [w, h]])
    dst = np.float32([[0, out_h], [0, 0], [out_w, 0], [out_w, out_h]])
    m = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(rgb, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def modnet_size(width: int, height: int, ref: int, max_pixels: int = 4 * 1024 * 1024) -> tuple[int, int]:
    """MODNet's input size for a photo: its shorter side to `ref` when both sides are under or
    both over `ref` (the aspect kept, truncated), then each side down to a multiple of 32.

    Two guards the official recipe lacks, for photos it would fail on or run out of memory
    with: at least 32 px a side, and at most `max_pixels` (a 40 MP strip of extreme aspect).
    """
    if max(height, width) < ref or min(height, width) > ref:
        if width >= height:
            height, width = ref, int(width / height * ref)
        else:
            height, width = int(height / width * ref), ref
    if width * height > max_pixels:
        shrink = (max_pixels / (width * height)) ** 0.5
        width, height = int(width * shrink), int(height * shrink)
    return max(32, width - width % 32), max(32, height - height % 32)


def pil_lanczos_resize(img: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Pillow's own Image.resize(..., LANCZOS), as rembg resizes, for uint8 (H,W) or (H,W,3)."""
    return np.asarray(Image.fromarray(img).resize((out_w, out_h), Image.Resampling.LANCZOS))


# --------------------------------------------------------------- segmenter
def _dim_ok(actual, expected: int) -> bool:
    return not isinstance(actual, int) or actual == expected


class Segmenter:
    """One ONNX Runtime session plus the manifest's pre/post-processing.
    Create once per process (Segmenter.load) and reuse; it is thread-safe for
    predict() as ONNX Runtime sessions are."""

    def __init__(self, manifest: ModelManifest, session: ort.InferenceSession, model_path: str,
                 run_slots: threading.Semaphore | None = None):
        self.manifest = manifest
        self.session = session
        self.model_path = model_path
        # Shared by a process's models: runs beyond the cores share them and only add activations.
        self.run_slots = run_slots or threading.BoundedSemaphore(1)
        shape = session.get_inputs()[[i.name for i in session.get_inputs()].index(manifest.input_name)].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    # ---------------------------------------------------------- loading
    @classmethod
    def load(cls, model_path: str, input_size=None, intra_op_threads: int = 1, inter_op_threads: int = 1,
             optimization_level: str = "all", run_slots: threading.Semaphore | None = None,
             manifest_path: str | None = None) -> "Segmenter":
        """`manifest_path` defaults to the model's own path with .json for .onnx."""
        model_path = os.fspath(model_path)
        if not os.path.isfile(model_path):
            raise ModelError(f"{model_path}: model file not found")
        manifest_path = os.fspath(manifest_path) if manifest_path else os.path.splitext(model_path)[0] + ".json"
        m = ModelManifest.from_json(manifest_path)
        if os.path.basename(model_path) != m.file:
            raise ModelError(f"{manifest_path}: manifest describes {m.file!r}, not {os.path.basename(model_path)!r}")
        digest = _sha256(model_path)
        if digest != m.sha256:
            raise ModelError(f"{model_path}: sha256 {digest} does not match manifest {m.sha256}")
        if input_size is not None:  # int (square) or [width, height]
            want = (int(input_size), int(input_size)) if isinstance(input_size, (int, float)) \
                else tuple(int(v) for v in input_size)
            if len(want) == 2 and not isinstance(input_size, (int, float)):
                want = (want[1], want[0])  # config gives [width, height]
            if want != (m.input_height, m.input_width):
                raise ModelError(f"{model_path}: model.input_size {input_size!r} does not match the model's "
                                 f"{m.input_width}x{m.input_height} (manifest {manifest_path})")
        if optimization_level not in OPT_LEVELS:
            raise ModelError(f"optimization_level {optimization_level!r}: expected one of {', '.join(OPT_LEVELS)}")

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(intra_op_threads)
        opts.inter_op_num_threads = int(inter_op_threads)
        opts.graph_optimization_level = OPT_LEVELS[optimization_level]
        # Measured (one thread, 5 runs): memory patterns cost U^2-Netp 195 MB of peak RSS
        # (545 -> 350 MB) and the selfie model 6 MB, and bought neither any speed.
        opts.enable_mem_pattern = False
        # Reuse keeps a freed tensor's buffer until a later tensor takes it, so buffers outlive
        # their tensors: U^2-Netp peaks at 444 MB with it and 342 MB without, at the same speed;
        # the selfie model is unchanged (tests/bench/model_memory.py).
        opts.enable_mem_reuse = False
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL if int(inter_op_threads) <= 1 \
            else ort.ExecutionMode.ORT_PARALLEL
        try:
            session = ort.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{model_path}: onnxruntime cannot load the model: {exc}") from exc
        cls._check_graph(m, session, model_path)
        return cls(m, session, model_path, run_slots)

    @staticmethod
    def _check_graph(m: ModelManifest, session: ort.InferenceSession, path: str) -> None:
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name: o for o in session.get_outputs()}
        if m.input_name not in inputs:
            raise ModelError(f"{path}: manifest input {m.input_name!r} not in graph inputs {sorted(inputs)}")
        if m.output_name not in outputs:
            raise ModelError(f"{path}: manifest output {m.output_name!r} not in graph outputs {sorted(outputs)}")
        others = [n for n in inputs if n != m.input_name]
        if others:
            raise ModelError(f"{path}: graph has extra inputs {others}; only {m.input_name!r} can be fed")
        inp = inputs[m.input_name]
        if inp.type != "tensor(float)":
            raise ModelError(f"{path}: input {m.input_name!r} is {inp.type}, expected tensor(float)")
        shape = list(inp.shape)
        if len(shape) != 4:
            raise ModelError(f"{path}: input {m.input_name!r} has rank {len(shape)} {shape}, expected 4 ({m.layout})")
        h, w, c = (shape[1], shape[2], shape[3]) if m.layout == "NHWC" else (shape[2], shape[3], shape[1])
        if not (_dim_ok(h, m.input_height) and _dim_ok(w, m.input_width) and _dim_ok(c, 3)):
            raise ModelError(f"{path}: input {m.input_name!r} shape {shape} does not match manifest "
                             f"{m.layout} {m.input_height}x{m.input_width}x3")
        out = outputs[m.output_name]
        oshape = list(out.shape)
        if len(oshape) != 4:
            raise ModelError(f"{path}: output {m.output_name!r} has rank {len(oshape)} {oshape}, expected 4")
        oc = oshape[3] if m.output_layout == "NHWC" else oshape[1]
        if not _dim_ok(oc, 1):
            raise ModelError(f"{path}: output {m.output_name!r} shape {oshape} has {oc} channels; manifest "
                             f"output_kind={m.output_kind} needs 1")

    # ---------------------------------------------------------- pipeline
    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) fed to the network."""
        return self.manifest.input_width, self.manifest.input_height

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 RGB -> one float32 tensor (no batch dim) in the model's layout."""
        m = self.manifest
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected H x W x 3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
        w, h = m.input_width, m.input_height
        if m.resize == "modnet_ref":
            # MODNet's own order: normalise the whole photo, then resize the floats
            x = self._normalise(rgb)
            return self._layout(cv2.resize(x, modnet_size(rgb.shape[1], rgb.shape[0], h),
                                           interpolation=cv2.INTER_AREA))
        if m.resize == "warp_bilinear":
            x = mediapipe_warp(rgb, w, h)
        elif m.resize == "bilinear":
            x = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
        else:
            x = pil_lanczos_resize(rgb, w, h)
        return self._layout(self._normalise(x))

    def _normalise(self, x: np.ndarray) -> np.ndarray:
        m = self.manifest
        if m.color_order == "BGR":
            x = x[:, :, ::-1]
        if m.scaling == "divide_255":
            x = x.astype(np.float32) / np.float32(255.0)
        else:  # rembg: x / max(x) in float64
            x = x / max(float(x.max()), 1e-6)
        if m.mean != (0.0, 0.0, 0.0) or m.std != (1.0, 1.0, 1.0):
            x = (x - np.asarray(m.mean, x.dtype)) / np.asarray(m.std, x.dtype)
        return x.astype(np.float32, copy=False)

    def _layout(self, x: np.ndarray) -> np.ndarray:
        if self.manifest.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run the network on a preprocessed batch; returns the raw output tensor."""
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            return np.concatenate([self.infer(batch[i:i + self.fixed_batch])
                                   for i in range(0, batch.shape[0], self.fixed_batch)])
        with self.run_slots:
            return self.session.run([self.manifest.output_name], {self.manifest.input_name: batch})[0]

    def _channels_last(self, out: np.ndarray) -> np.ndarray:
        return out if self.manifest.output_layout == "NHWC" else out.transpose(1, 2, 0)

    def postprocess(self, out: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """One raw output (no batch dim) -> uint8 mask at size=(height, width)."""
        m = self.manifest
        prob = self._channels_last(out)[:, :, 0].astype(np.float32)
        if m.output_normalization == "minmax":
            lo, hi = float(prob.min()), float(prob.max())
            prob = (prob - lo) / (hi - lo) if hi > lo else np.zeros_like(prob)
        h, w = size
        if m.output_resize == "pil_lanczos":
            # rembg: (pred * 255).astype(uint8) then PIL LANCZOS to the original size
            return pil_lanczos_resize((prob * 255).astype(np.uint8), w, h)
        if m.output_resize == "area_uint8":
            # MODNet: (matte * 255).astype(uint8) then INTER_AREA to the original size
            return cv2.resize((prob * 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_AREA)
        interp = cv2.INTER_LINEAR if m.output_resize == "bilinear" else cv2.INTER_NEAREST
        # A sigmoid's output is in [0, 1] already, and interpolating cannot take it further out
        # than float rounding, which the +0.5 and truncation below absorb (1 + 1e-6 still makes
        # 255): such a mask skips the clip, two passes over the full-size floats (post-processing
        # 1.15 -> 0.77 ms at 1024x768), for the same bytes.  Checked on the model's small output.
        low, high = cv2.minMaxLoc(prob)[:2]
        if prob.shape != (h, w):
            prob = cv2.resize(prob, (w, h), interpolation=interp)
        if not 0.0 <= low <= high <= 1.0:  # a NaN stays a NaN either way
            # In place (prob is our own copy), and minimum/maximum rather than np.clip: the
            # same float32 arithmetic, so the same mask bytes, in less time.
            np.minimum(prob, 1.0, out=prob)
            np.maximum(prob, 0.0, out=prob)
        prob *= 255.0
        prob += 0.5
        return prob.astype(np.uint8)

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 RGB -> H x W uint8 foreground mask (0..255)."""
        return self.predict_batch([rgb])[0]

    def predict_batch(self, images: list) -> list:
        if not images:
            return []
        tensors = [self.preprocess(im) for im in images]
        if len({t.shape for t in tensors}) > 1:  # a model of any input size: one run per image
            return [self.predict_batch([im])[0] for im in images]
        out = self.infer(np.stack(tensors))
        return [self.postprocess(out[i], im.shape[:2]) for i, im in enumerate(images)]


__all__ = ["ModelError", "ModelManifest", "Segmenter", "mediapipe_warp", "modnet_size", "pil_lanczos_resize"]
