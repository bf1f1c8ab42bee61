"""The exception the Caffe converter raises for bad input, and the warning it gives for approximations."""


class CaffeConversionError(ValueError):
    """A prototxt or caffemodel that cannot be converted; the message names the file, layer or blob."""


class CaffeConversionWarning(UserWarning):
    """A layer converted with a documented approximation or dropped; the message names the layer and its type.

    The same messages are recorded in the model's metadata ``ebr_onnx.conversion_notes`` (a JSON list).
    """
