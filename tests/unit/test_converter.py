"""models/build_segmentation.py: each TFLite->ONNX trap checked against a numpy
reference on a tiny graph, plus properties of the committed model."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mediapipe_wheel import FETCH, WHEEL_DIR, cached_wheel, load_converter
from onnx import TensorProto, helper

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "models")

bs = load_converter()
rng = np.random.default_rng(1234)


def run_nhwc(build, x_nhwc: np.ndarray, out_channels: int | None = None) -> np.ndarray:
    """Build a one-op graph with GraphBuilder (NCHW inside), feed NHWC, return NHWC."""
    g = bs.GraphBuilder()
    x = g.node("Transpose", ["x"], "x_nchw", perm=[0, 3, 1, 2])
    y = build(g, x)
    g.node("Transpose", [y], "y", perm=[0, 2, 3, 1])
    graph = helper.make_graph(g.nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_nhwc.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)], initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", bs.OPSET)])
    model.ir_version = bs.IR_VERSION
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x_nhwc.astype(np.float32)})[0]


# ---------------------------------------------------------------- numpy references (TF semantics)
def windows(x, kh, kw, stride, pads):
    """x (NHWC) padded by pads = (top, bottom, left, right): the output size (oh, ow) and the
    (i, j, window) of every output position."""
    t, bo, l, r = pads
    xp = np.pad(x, ((0, 0), (t, bo), (l, r), (0, 0)))
    oh = (xp.shape[1] - kh) // stride[0] + 1
    ow = (xp.shape[2] - kw) // stride[1] + 1
    return (oh, ow), ((i, j, xp[:, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw, :])
                      for i in range(oh) for j in range(ow))


def ref_conv_nhwc(x, w_ohwi, b, stride, pads):
    """Direct convolution, pads = (top, bottom, left, right)."""
    o, kh, kw, _ = w_ohwi.shape
    (oh, ow), patches = windows(x, kh, kw, stride, pads)
    y = np.zeros((x.shape[0], oh, ow, o), np.float64)
    for i, j, patch in patches:
        y[:, i, j, :] = np.einsum("nhwc,ohwc->no", patch, w_ohwi)
    return y + (0 if b is None else b)


def ref_depthwise_nhwc(x, w_1hwc, b, stride, pads):
    _, kh, kw, _ = w_1hwc.shape
    (oh, ow), patches = windows(x, kh, kw, stride, pads)
    y = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for i, j, patch in patches:
        y[:, i, j, :] = (patch * w_1hwc[0]).sum(axis=(1, 2))
    return y + b


def tf_same_pads(in_size, k, s):
    out = -(-in_size // s)
    total = max((out - 1) * s + k - in_size, 0)
    return total // 2, total - total // 2


def ref_transpose_conv_mediapipe(x, w_ohwi, b, padding, stride):
    """MediaPipe Convolution2DTransposeBias: scatter, then crop by its padding rule."""
    n, h, w, c = x.shape
    o, kh, kw, _ = w_ohwi.shape
    sh, sw = stride
    full = np.zeros((n, (h - 1) * sh + kh, (w - 1) * sw + kw, o))
    for i in range(h):
        for j in range(w):
            full[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :] += np.einsum("nc,ohwc->nhwo", x[:, i, j, :], w_ohwi)

    def out_size(size, k, s):
        return size * s if padding == 1 else size * s + max(k - s, 0)

    def pad(size, k, s, out):
        return max(((size - 1) * s + k - out) // 2, 0)

    oh, ow = out_size(h, kh, sh), out_size(w, kw, sw)
    ph, pw = pad(h, kh, sh, oh), pad(w, kw, sw, ow)
    return full[:, ph:ph + oh, pw:pw + ow, :] + b


def ref_resize_bilinear_tf(x, out_h, out_w, half_pixel_centers, align_corners=False):
    n, h, w, c = x.shape

    def coords(out_size, in_size):
        if align_corners and out_size > 1:
            scale = (in_size - 1) / (out_size - 1)
        else:
            scale = in_size / out_size
        o = np.arange(out_size, dtype=np.float64)
        src = (o + 0.5) * scale - 0.5 if half_pixel_centers else o * scale
        lo = np.floor(src)
        frac = src - lo
        lo_i = np.clip(lo, 0, in_size - 1).astype(int)
        hi_i = np.clip(np.ceil(src), 0, in_size - 1).astype(int)
        return lo_i, hi_i, frac

    y0, y1, fy = coords(out_h, h)
    x0, x1, fx = coords(out_w, w)
    top = x[:, y0][:, :, x0] * (1 - fx)[None, None, :, None] + x[:, y0][:, :, x1] * fx[None, None, :, None]
    bot = x[:, y1][:, :, x0] * (1 - fx)[None, None, :, None] + x[:, y1][:, :, x1] * fx[None, None, :, None]
    return top * (1 - fy)[None, :, None, None] + bot * fy[None, :, None, None]


# ---------------------------------------------------------------- trap 1: SAME padding
def test_same_pads_put_extra_at_end():
    assert bs.same_pads(256, 3, 2) == (0, 1)
    assert bs.same_pads(8, 3, 2) == (0, 1)
    assert bs.same_pads(9, 3, 2) == (1, 1)
    assert bs.same_pads(16, 5, 1) == (2, 2)
    assert bs.same_pads(32, 5, 2) == (1, 2)


@pytest.mark.parametrize("hw,k", [((8, 10), 3), ((9, 8), 3), ((16, 16), 5)])
def test_conv_stride2_same_matches_tf_lopsided_padding(hw, k):
    x = rng.standard_normal((2, *hw, 3)).astype(np.float32)
    w = rng.standard_normal((4, k, k, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    got = run_nhwc(lambda g, t: g.conv2d(t, "conv", w, b, hw, (2, 2), bs.PADDING_SAME), x)
    th = tf_same_pads(hw[0], k, 2)
    tw = tf_same_pads(hw[1], k, 2)
    want = ref_conv_nhwc(x, w, b, (2, 2), (th[0], th[1], tw[0], tw[1]))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if th[0] != th[1]:  # symmetric/SAME_LOWER padding would shift the output: prove it differs
        wrong = ref_conv_nhwc(x, w, b, (2, 2), (th[1], th[0], tw[1], tw[0]))
        assert np.abs(got - wrong).max() > 1e-2


def test_depthwise_stride2_same_and_fused_relu6():
    x = rng.standard_normal((1, 10, 10, 6)).astype(np.float32) * 4
    w = rng.standard_normal((1, 3, 3, 6)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    got = run_nhwc(lambda g, t: g.conv2d(t, "dw", w, b, (10, 10), (2, 2), bs.PADDING_SAME, depthwise=True, fused=3), x)
    want = np.clip(ref_depthwise_nhwc(x, w, b, (2, 2), (0, 1, 0, 1)), 0, 6)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv_valid_padding():
    x = rng.standard_normal((1, 7, 7, 2)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)
    got = run_nhwc(lambda g, t: g.conv2d(t, "c", w, None, (7, 7), (2, 2), bs.PADDING_VALID), x)
    np.testing.assert_allclose(got, ref_conv_nhwc(x, w, None, (2, 2), (0, 0, 0, 0)), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- trap 2: Convolution2DTransposeBias
def test_transpose_conv_options_are_raw_c_struct():
    assert bs.parse_transpose_conv_options(struct.pack("<iii", 1, 2, 3)) == (1, 2, 3)
    with pytest.raises(bs.ConversionError):
        bs.parse_transpose_conv_options(struct.pack("<ii", 1, 2))  # not 12 bytes
    with pytest.raises(bs.ConversionError):
        bs.parse_transpose_conv_options(struct.pack("<iii", 7, 2, 2))  # bad padding enum


@pytest.mark.parametrize("k,stride,padding,hw", [
    (2, (2, 2), 1, (5, 6)),   # the selfie model's case
    (3, (2, 2), 1, (4, 4)),   # lopsided crop
    (4, (2, 2), 1, (3, 5)),   # symmetric crop of 1
    (3, (2, 1), 2, (4, 3)),   # VALID, different strides (stride_w != stride_h)
])
def test_transpose_conv_bias_matches_mediapipe_reference(k, stride, padding, hw):
    x = rng.standard_normal((2, *hw, 3)).astype(np.float32)
    w = rng.standard_normal((2, k, k, 3)).astype(np.float32)  # OHWI
    b = rng.standard_normal(2).astype(np.float32)
    raw = struct.pack("<iii", padding, stride[1], stride[0])  # padding, stride_w, stride_h
    got = run_nhwc(lambda g, t: g.transpose_conv_bias(t, "tc", w, b, hw, raw)[0], x)
    want = ref_transpose_conv_mediapipe(x, w, b, padding, stride)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_transpose_conv_stride_order_matters():
    # swapping stride_w/stride_h in the struct must change the output shape
    x = rng.standard_normal((1, 4, 4, 1)).astype(np.float32)
    w = rng.standard_normal((1, 2, 2, 1)).astype(np.float32)
    b = np.zeros(1, np.float32)
    got = run_nhwc(lambda g, t: g.transpose_conv_bias(t, "tc", w, b, (4, 4), struct.pack("<iii", 1, 1, 2))[0], x)
    assert got.shape == (1, 8, 4, 1)


# ---------------------------------------------------------------- trap 3: RESIZE_BILINEAR
@pytest.mark.parametrize("half_pixel,align", [(True, False), (False, True), (False, False)])
def test_resize_bilinear_coordinate_modes(half_pixel, align):
    x = rng.standard_normal((1, 5, 7, 3)).astype(np.float32)
    got = run_nhwc(lambda g, t: g.resize_bilinear(t, "rs", (5, 7), (10, 14), align, half_pixel), x)
    want = ref_resize_bilinear_tf(x, 10, 14, half_pixel, align)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if half_pixel:
        other = ref_resize_bilinear_tf(x, 10, 14, False, False)
        assert np.abs(got - other).max() > 1e-2


def test_resize_mode_mapping():
    assert bs.resize_coordinate_mode(False, True) == "half_pixel"
    assert bs.resize_coordinate_mode(True, False) == "align_corners"
    assert bs.resize_coordinate_mode(False, False) == "asymmetric"
    with pytest.raises(bs.ConversionError):
        bs.resize_coordinate_mode(True, True)


# ---------------------------------------------------------------- trap 4: AVERAGE_POOL_2D
def test_whole_map_average_pool_is_global_average_pool():
    x = rng.standard_normal((2, 6, 9, 4)).astype(np.float32)
    g_holder = {}

    def build(g, t):
        g_holder["g"] = g
        return g.average_pool(t, "ap", (6, 9), (1, 1), (6, 9), (6, 9), bs.PADDING_VALID)

    got = run_nhwc(build, x)
    assert [n.op_type for n in g_holder["g"].nodes if n.name == "ap"] == ["GlobalAveragePool"]
    np.testing.assert_allclose(got, x.mean(axis=(1, 2), keepdims=True), rtol=1e-5, atol=1e-6)


def test_partial_same_average_pool_refused():
    g = bs.GraphBuilder()
    with pytest.raises(bs.ConversionError):
        g.average_pool("x", "ap", (6, 6), (3, 3), (2, 2), (2, 2), bs.PADDING_SAME)


# ---------------------------------------------------------------- committed model
def _committed():
    return onnx.load(os.path.join(MODELS, "segmentation.onnx"))


def test_committed_model_sha256_matches_manifest():
    with open(os.path.join(MODELS, "segmentation.json")) as f:
        manifest = json.load(f)
    with open(os.path.join(MODELS, "segmentation.onnx"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == manifest["sha256"]


def test_committed_model_contract():
    m = _committed()
    onnx.checker.check_model(m, full_check=True)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = m.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "image" and isinstance(dims[0], str) and dims[1:] == [256, 256, 3]
    (out,) = m.graph.output
    assert [d.dim_value for d in out.type.tensor_type.shape.dim][1:] == [256, 256, 1]
    # fp16 weights folded: only fp32 initializers, no dequantize/cast nodes left
    assert {i.data_type for i in m.graph.initializer} == {TensorProto.FLOAT}
    ops = [n.op_type for n in m.graph.node]
    assert not {"DequantizeLinear", "Cast"} & set(ops)
    assert ops.count("GlobalAveragePool") == 10
    assert ops.count("ConvTranspose") == 1
    modes = [a.s.decode() for n in m.graph.node if n.op_type == "Resize"
             for a in n.attribute if a.name == "coordinate_transformation_mode"]
    assert modes == ["half_pixel"] * 3
    assert ops[-1] == "Transpose" and "Sigmoid" in ops


def test_committed_model_dynamic_batch_consistent():
    sess = ort.InferenceSession(os.path.join(MODELS, "segmentation.onnx"), providers=["CPUExecutionProvider"])
    x = rng.random((3, 256, 256, 3)).astype(np.float32)
    y = sess.run(None, {"image": x})[0]
    assert y.shape == (3, 256, 256, 1)
    assert 0.0 <= y.min() and y.max() <= 1.0
    y1 = sess.run(None, {"image": x[1:2]})[0]
    np.testing.assert_allclose(y[1:2], y1, atol=1e-5)


@pytest.fixture(scope="session")
def mediapipe_wheel() -> str:
    wheel = cached_wheel(bs)
    if wheel is None:
        pytest.fail(f"the {bs.WHEEL_SPEC} wheel is not in {WHEEL_DIR}: fetch it with `{FETCH}` "
                    "(`bash infra/dev.sh test` does before the tests)", pytrace=False)
    return str(wheel)


def test_converter_reproduces_committed_model_bit_for_bit(mediapipe_wheel):
    data = bs.build(mediapipe_wheel)
    with open(os.path.join(MODELS, "segmentation.onnx"), "rb") as f:
        assert data == f.read()


def test_converter_checks_tflite_sha256(tmp_path):
    import zipfile

    fake = tmp_path / "mediapipe-0.10.14-fake.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(bs.TFLITE_MEMBER, b"not the model")
    with pytest.raises(bs.ConversionError, match="sha256"):
        bs.read_tflite_from_wheel(str(fake))
