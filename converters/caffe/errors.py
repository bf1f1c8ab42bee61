"""The one exception type the Caffe converter raises for bad input."""


class CaffeConversionError(ValueError):
    """A prototxt or caffemodel that cannot be converted; the message names the file, layer or blob."""
