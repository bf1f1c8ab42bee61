"""Op families: the one home of every set of ONNX op types that more than one module reasons about."""
from __future__ import annotations

#: Ops whose outputs describe a tensor's shape, not its values: signal stops there.
SHAPE_OPS = frozenset({"Shape", "Size"})
#: Ops whose outputs never depend on the values of their inputs.
VALUE_FREE_OPS = SHAPE_OPS | {"ConstantOfShape", "EyeLike", "RandomNormalLike", "RandomUniformLike"}

#: Linear ops with a weight operand: the ones EB's Eq. 8 applies to and a classifier can be.
LINEAR_OPS = frozenset({"Conv", "Gemm", "MatMul"})
#: The matrix products among them: the projections of recurrent cells written out in primitive ops.
MATRIX_OPS = frozenset({"Gemm", "MatMul"})
#: The fused recurrent ops.
RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})
#: Control flow that ebr_onnx unrolls on load.
LOOP_OPS = frozenset({"Loop", "Scan"})
#: Output activations (heads) looked through to find the pre-activation logits the prior is set on (an ArgMax head
#: outputs the decision itself).
HEAD_ACTIVATIONS = frozenset({"Softmax", "LogSoftmax", "Sigmoid", "Identity", "Dropout", "ArgMax"})
#: Pooling ops: their output is non-negative where their input is.
POOLING_OPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})

#: Ops that keep the element order and only change the shape.
RESHAPE_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
#: Ops that pass values on unchanged in some layout: traced through between a recurrence's input and the CNN
#: output it reads, between a model input and the frames tensor, and below the logits.
LAYOUT_OPS = RESHAPE_OPS | {"Transpose", "Identity", "Dropout"}
#: Ops that pick parts of a tensor (an unrolled recurrence reads x_t through them).
PICK_OPS = frozenset({"Gather", "Slice", "Split"})
#: Ops that route values unchanged inside a recurrent cell (between a gate sum and its gates).
ROUTING_OPS = RESHAPE_OPS | PICK_OPS | {"Identity"}
#: Ops between a classifier and the logits that do not change which unit is which (bias adds, picks, layouts).
HEAD_OPS = LAYOUT_OPS | {"Add", "Sub", "Gather", "Slice"}
#: Ops whose output is non-negative when their (first) input is: a linear rule below them needs no sign check.
SIGN_KEEPING_OPS = LAYOUT_OPS | POOLING_OPS | {"Cast", "Tile", "Upsample", "ReduceMax", "ReduceMin"}
#: Ops whose output has the same axes as their (first) signal input.
SAME_AXES_OPS = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Softplus", "Clip", "Identity", "Dropout", "Cast", "Neg",
    "Abs", "Exp", "Log", "Sqrt", "BatchNormalization", "InstanceNormalization", "LRN", "MaxPool", "AveragePool",
    "LpPool", "Pad", "Slice", "Split", "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Softmax", "Conv",
    "ConvTranspose", "Resize", "Upsample", "Concat", "GlobalAveragePool", "GlobalMaxPool",
    "Reciprocal", "Pow", "Mish", "CastLike", "LayerNormalization", "GroupNormalization", "Tile", "Where",
})
#: Gates: a signal tensor multiplied by (a layout of) one of their outputs is gated; under EB the gate is a weight.
GATE_OPS = frozenset({"Sigmoid", "HardSigmoid"})
#: Ops whose outputs are booleans or indices: they end a signal path (their inputs take none).
NON_FLOAT_OPS = frozenset({
    "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf",
    "ArgMax", "ArgMin", "NonZero",
})
#: Layers offered as map layers.
MAP_LAYER_OPS = ("Conv", "Relu", "MaxPool", "AveragePool", "BatchNormalization")
