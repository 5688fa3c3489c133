"""Which ONNX kernels onnxruntime's CUDA execution provider has, for the ops dlc emits.

A training step that runs on ``--device cuda`` should run there whole: an op
without a CUDA kernel for its input type is silently placed on the CPU, with a
device-to-host copy before it and one back after it, every step.  This table
lists, per ONNX op type dlc's lowerings emit, the element types of the op's
first input for which onnxruntime registers a CUDA kernel (from onnxruntime's
generated kernel table, docs/OperatorKernels.md, CUDAExecutionProvider
section, at the opsets dlc exports).  :func:`cuda_gaps` lists what an exported
model needs beyond it; the tests keep every spec's exports free of gaps, so a
new lowering that emits an op or a type missing here fails until it is checked
against that table (and, if the kernel is missing, lowered differently — as
``count`` and the random ops' element counts avoid int64 ``ReduceProd``).
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, shape_inference

_F = ("FLOAT", "DOUBLE", "FLOAT16")
_NUM = _F + ("BFLOAT16", "INT32", "INT64", "UINT32", "UINT64")
_ALL = _NUM + ("BOOL", "INT8", "INT16", "UINT8", "UINT16")

CUDA_KERNELS: dict[str, tuple[str, ...]] = {
    **{op: _F for op in ("ArgMax", "Conv", "ConvTranspose", "Cos", "Exp", "Gemm", "GRU", "LayerNormalization",
                         "LeakyRelu", "Log", "LogSoftmax", "LSTM", "MatMul", "MaxPool", "Sigmoid", "Softmax",
                         "Softplus", "Sqrt", "Tanh", "Relu", "Pow")},
    **{op: _NUM for op in ("Abs", "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Max", "Min", "Equal", "Greater",
                           "GreaterOrEqual", "ReduceSum")},
    **{op: _ALL for op in ("Cast", "Concat", "Expand", "Gather", "GatherElements", "Identity", "Reshape",
                           "Scan", "ScatterElements", "Shape", "Size", "Slice", "Split", "Squeeze",
                           "Transpose", "Unsqueeze")},
    "Clip": _F + ("INT8", "UINT8", "INT64", "UINT64"),
    "ConstantOfShape": ("INT64",),
    "Pad": _F + ("BOOL",),
    "Range": ("FLOAT", "DOUBLE", "INT16", "INT32", "INT64"),
    "ReduceProd": ("FLOAT", "DOUBLE", "FLOAT16", "INT32"),  # no int64: count lowers to Gather + Mul instead
    "Where": ("BOOL",),  # the condition; the branches take every numeric type
}
NO_INPUT_OPS = ("Constant",)


def cuda_gaps(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """``(op type, first input's element type)`` pairs of ``model`` (subgraphs included)
    with no CUDA kernel in :data:`CUDA_KERNELS`, sorted, each once."""
    inferred = shape_inference.infer_shapes(model)
    gaps: set[tuple[str, str]] = set()

    def walk(graph: onnx.GraphProto, types: dict[str, int]) -> None:
        types = dict(types)
        for vi in [*graph.input, *graph.value_info, *graph.output]:
            types[vi.name] = vi.type.tensor_type.elem_type
        for init in graph.initializer:
            types[init.name] = init.data_type
        for node in graph.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g, types)
            if node.op_type in NO_INPUT_OPS:
                continue
            first = next((i for i in node.input if i), None)
            dtype = TensorProto.DataType.Name(types.get(first, 0)) if first else "NONE"
            if dtype not in CUDA_KERNELS.get(node.op_type, ()):
                gaps.add((node.op_type, dtype))

    walk(inferred.graph, {})
    return sorted(gaps)
