"""The subset of Caffe's ``caffe.proto`` that the converter reads, built at import time.

Field numbers, types and defaults are those of BVLC Caffe's public ``src/caffe/proto/caffe.proto``.
Fields the converter never reads are left out; text files skip them (``allow_unknown_field``) and binary
files keep them as unknown fields. The messages live in a private descriptor pool, so they never clash with
a real ``caffe_pb2`` imported in the same process.
"""

from __future__ import annotations

from typing import NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PACKAGE = "caffe"


class _Field(NamedTuple):
    name: str
    number: int
    type: str  # a scalar type name, an enum name or a message name
    label: str = "optional"
    default: str | None = None
    packed: bool = False


F = _Field

_ENUMS: dict[str, dict[str, int]] = {
    "Phase": {"TRAIN": 0, "TEST": 1},
    "FillerParameter.VarianceNorm": {"FAN_IN": 0, "FAN_OUT": 1, "AVERAGE": 2},
    "ParamSpec.DimCheckMode": {"STRICT": 0, "PERMISSIVE": 1},
    "PoolingParameter.PoolMethod": {"MAX": 0, "AVE": 1, "STOCHASTIC": 2},
    "LRNParameter.NormRegion": {"ACROSS_CHANNELS": 0, "WITHIN_CHANNEL": 1},
    "EltwiseParameter.EltwiseOp": {"PROD": 0, "SUM": 1, "MAX": 2},
}

_MESSAGES: dict[str, list[_Field]] = {
    "BlobShape": [F("dim", 1, "int64", "repeated", packed=True)],
    "BlobProto": [
        F("shape", 7, "BlobShape"),
        F("data", 5, "float", "repeated", packed=True),
        F("diff", 6, "float", "repeated", packed=True),
        F("double_data", 8, "double", "repeated", packed=True),
        F("double_diff", 9, "double", "repeated", packed=True),
        F("num", 1, "int32", default="0"),
        F("channels", 2, "int32", default="0"),
        F("height", 3, "int32", default="0"),
        F("width", 4, "int32", default="0"),
    ],
    "FillerParameter": [
        F("type", 1, "string", default="constant"),
        F("value", 2, "float", default="0"),
        F("min", 3, "float", default="0"),
        F("max", 4, "float", default="1"),
        F("mean", 5, "float", default="0"),
        F("std", 6, "float", default="1"),
        F("sparse", 7, "int32", default="-1"),
        F("variance_norm", 8, "FillerParameter.VarianceNorm", default="FAN_IN"),
    ],
    "NetParameter": [
        F("name", 1, "string"),
        F("input", 3, "string", "repeated"),
        F("input_shape", 8, "BlobShape", "repeated"),
        F("input_dim", 4, "int32", "repeated"),
        F("force_backward", 5, "bool", default="false"),
        F("state", 6, "NetState"),
        F("debug_info", 7, "bool", default="false"),
        F("layer", 100, "LayerParameter", "repeated"),
        F("layers", 2, "V1LayerParameter", "repeated"),
    ],
    "NetState": [
        F("phase", 1, "Phase", default="TEST"),
        F("level", 2, "int32", default="0"),
        F("stage", 3, "string", "repeated"),
    ],
    "NetStateRule": [
        F("phase", 1, "Phase"),
        F("min_level", 2, "int32"),
        F("max_level", 3, "int32"),
        F("stage", 4, "string", "repeated"),
        F("not_stage", 5, "string", "repeated"),
    ],
    "ParamSpec": [
        F("name", 1, "string"),
        F("share_mode", 2, "ParamSpec.DimCheckMode"),
        F("lr_mult", 3, "float", default="1"),
        F("decay_mult", 4, "float", default="1"),
    ],
    "LayerParameter": [
        F("name", 1, "string"),
        F("type", 2, "string"),
        F("bottom", 3, "string", "repeated"),
        F("top", 4, "string", "repeated"),
        F("phase", 10, "Phase"),
        F("loss_weight", 5, "float", "repeated"),
        F("param", 6, "ParamSpec", "repeated"),
        F("blobs", 7, "BlobProto", "repeated"),
        F("propagate_down", 11, "bool", "repeated"),
        F("include", 8, "NetStateRule", "repeated"),
        F("exclude", 9, "NetStateRule", "repeated"),
        F("argmax_param", 103, "ArgMaxParameter"),
        F("batch_norm_param", 139, "BatchNormParameter"),
        F("bias_param", 141, "BiasParameter"),
        F("concat_param", 104, "ConcatParameter"),
        F("convolution_param", 106, "ConvolutionParameter"),
        F("dropout_param", 108, "DropoutParameter"),
        F("dummy_data_param", 109, "DummyDataParameter"),
        F("eltwise_param", 110, "EltwiseParameter"),
        F("flatten_param", 135, "FlattenParameter"),
        F("inner_product_param", 117, "InnerProductParameter"),
        F("input_param", 143, "InputParameter"),
        F("lrn_param", 118, "LRNParameter"),
        F("pooling_param", 121, "PoolingParameter"),
        F("power_param", 122, "PowerParameter"),
        F("prelu_param", 131, "PReLUParameter"),
        F("recurrent_param", 146, "RecurrentParameter"),
        F("relu_param", 123, "ReLUParameter"),
        F("reshape_param", 133, "ReshapeParameter"),
        F("scale_param", 142, "ScaleParameter"),
        F("softmax_param", 125, "SoftmaxParameter"),
        F("slice_param", 126, "SliceParameter"),
    ],
    # Only enough of the deprecated V1 format to recognise it and name its layers.
    "V1LayerParameter": [
        F("bottom", 2, "string", "repeated"),
        F("top", 3, "string", "repeated"),
        F("name", 4, "string"),
    ],
    "ArgMaxParameter": [
        F("out_max_val", 1, "bool", default="false"),
        F("top_k", 2, "uint32", default="1"),
        F("axis", 3, "int32"),
    ],
    "BatchNormParameter": [
        F("use_global_stats", 1, "bool"),
        F("moving_average_fraction", 2, "float", default="0.999"),
        F("eps", 3, "float", default="1e-05"),
    ],
    "BiasParameter": [
        F("axis", 1, "int32", default="1"),
        F("num_axes", 2, "int32", default="1"),
        F("filler", 3, "FillerParameter"),
    ],
    "ConcatParameter": [
        F("axis", 2, "int32", default="1"),
        F("concat_dim", 1, "uint32", default="1"),
    ],
    "ConvolutionParameter": [
        F("num_output", 1, "uint32"),
        F("bias_term", 2, "bool", default="true"),
        F("pad", 3, "uint32", "repeated"),
        F("kernel_size", 4, "uint32", "repeated"),
        F("stride", 6, "uint32", "repeated"),
        F("dilation", 18, "uint32", "repeated"),
        F("pad_h", 9, "uint32", default="0"),
        F("pad_w", 10, "uint32", default="0"),
        F("kernel_h", 11, "uint32"),
        F("kernel_w", 12, "uint32"),
        F("stride_h", 13, "uint32"),
        F("stride_w", 14, "uint32"),
        F("group", 5, "uint32", default="1"),
        F("weight_filler", 7, "FillerParameter"),
        F("bias_filler", 8, "FillerParameter"),
        F("axis", 16, "int32", default="1"),
        F("force_nd_im2col", 17, "bool", default="false"),
    ],
    "DropoutParameter": [F("dropout_ratio", 1, "float", default="0.5")],
    "DummyDataParameter": [
        F("data_filler", 1, "FillerParameter", "repeated"),
        F("shape", 6, "BlobShape", "repeated"),
        F("num", 2, "uint32", "repeated"),
        F("channels", 3, "uint32", "repeated"),
        F("height", 4, "uint32", "repeated"),
        F("width", 5, "uint32", "repeated"),
    ],
    "EltwiseParameter": [
        F("operation", 1, "EltwiseParameter.EltwiseOp", default="SUM"),
        F("coeff", 2, "float", "repeated"),
        F("stable_prod_grad", 3, "bool", default="true"),
    ],
    "FlattenParameter": [
        F("axis", 1, "int32", default="1"),
        F("end_axis", 2, "int32", default="-1"),
    ],
    "InnerProductParameter": [
        F("num_output", 1, "uint32"),
        F("bias_term", 2, "bool", default="true"),
        F("weight_filler", 3, "FillerParameter"),
        F("bias_filler", 4, "FillerParameter"),
        F("axis", 5, "int32", default="1"),
        F("transpose", 6, "bool", default="false"),
    ],
    "InputParameter": [F("shape", 1, "BlobShape", "repeated")],
    "LRNParameter": [
        F("local_size", 1, "uint32", default="5"),
        F("alpha", 2, "float", default="1"),
        F("beta", 3, "float", default="0.75"),
        F("norm_region", 4, "LRNParameter.NormRegion", default="ACROSS_CHANNELS"),
        F("k", 5, "float", default="1"),
    ],
    "PoolingParameter": [
        F("pool", 1, "PoolingParameter.PoolMethod", default="MAX"),
        F("pad", 4, "uint32", default="0"),
        F("pad_h", 9, "uint32", default="0"),
        F("pad_w", 10, "uint32", default="0"),
        F("kernel_size", 2, "uint32"),
        F("kernel_h", 5, "uint32"),
        F("kernel_w", 6, "uint32"),
        F("stride", 3, "uint32", default="1"),
        F("stride_h", 7, "uint32"),
        F("stride_w", 8, "uint32"),
        F("global_pooling", 12, "bool", default="false"),
    ],
    "PowerParameter": [
        F("power", 1, "float", default="1"),
        F("scale", 2, "float", default="1"),
        F("shift", 3, "float", default="0"),
    ],
    "PReLUParameter": [
        F("filler", 1, "FillerParameter"),
        F("channel_shared", 2, "bool", default="false"),
    ],
    "RecurrentParameter": [
        F("num_output", 1, "uint32", default="0"),
        F("weight_filler", 2, "FillerParameter"),
        F("bias_filler", 3, "FillerParameter"),
        F("debug_info", 4, "bool", default="false"),
        F("expose_hidden", 5, "bool", default="false"),
    ],
    "ReLUParameter": [F("negative_slope", 1, "float", default="0")],
    "ReshapeParameter": [
        F("shape", 1, "BlobShape"),
        F("axis", 2, "int32", default="0"),
        F("num_axes", 3, "int32", default="-1"),
    ],
    "ScaleParameter": [
        F("axis", 1, "int32", default="1"),
        F("num_axes", 2, "int32", default="1"),
        F("filler", 3, "FillerParameter"),
        F("bias_term", 4, "bool", default="false"),
        F("bias_filler", 5, "FillerParameter"),
    ],
    "SliceParameter": [
        F("axis", 3, "int32", default="1"),
        F("slice_point", 2, "uint32", "repeated"),
        F("slice_dim", 1, "uint32", default="1"),
    ],
    "SoftmaxParameter": [F("axis", 2, "int32", default="1")],
}

_SCALARS = {
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
    "float": descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
}
_LABELS = {
    "optional": descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    "repeated": descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
}


def _field_proto(field: _Field) -> descriptor_pb2.FieldDescriptorProto:
    proto = descriptor_pb2.FieldDescriptorProto(name=field.name, number=field.number, label=_LABELS[field.label])
    if field.type in _SCALARS:
        proto.type = _SCALARS[field.type]
    else:
        is_enum = field.type in _ENUMS
        proto.type = proto.TYPE_ENUM if is_enum else proto.TYPE_MESSAGE
        proto.type_name = f".{_PACKAGE}.{field.type}"
    if field.default is not None:
        proto.default_value = field.default
    if field.packed:
        proto.options.packed = True
    return proto


def _file_proto() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(name="ebr_onnx_caffe.proto", package=_PACKAGE, syntax="proto2")
    messages = {}
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        message.field.extend(_field_proto(f) for f in fields)
        messages[name] = message
    for qualified, values in _ENUMS.items():
        owner, _, enum_name = qualified.rpartition(".")
        enum = (messages[owner].enum_type if owner else file.enum_type).add(name=enum_name)
        enum.value.extend(descriptor_pb2.EnumValueDescriptorProto(name=k, number=v) for k, v in values.items())
    return file


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_proto())


def _message(name: str) -> type:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


NetParameter = _message("NetParameter")
LayerParameter = _message("LayerParameter")
BlobProto = _message("BlobProto")
BlobShape = _message("BlobShape")
FillerParameter = _message("FillerParameter")
PoolingParameter = _message("PoolingParameter")
LRNParameter = _message("LRNParameter")
EltwiseParameter = _message("EltwiseParameter")
Phase = _POOL.FindEnumTypeByName(f"{_PACKAGE}.Phase")
