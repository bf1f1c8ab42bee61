"""Write the Keras part of the op-coverage corpus in ``tests/fixtures/keras/corpus/``: small Keras architectures
exported with tf2onnx (``tests/corpus_models.py`` adds the PyTorch ones; ``tests/test_op_coverage.py`` and
``tools/op_coverage.py`` read both).

* ``keras_mobilenet`` — MobileNetV3-style: hard-swish stem, inverted residual blocks (1×1 expansion,
  ``DepthwiseConv2D``, squeeze-excitation with hard-sigmoid, 1×1 projection, residual ``Add``), BatchNorm,
  global average pooling, ``Dense``;
* ``keras_resnet`` — ResNet-style: conv + BatchNorm + ReLU stem, max pooling, an identity block and a strided
  projection block (``Add``), global average pooling, ``Dense``;
* ``keras_audio_lstm`` — an audio tagger on log-mel frames: ``Conv1D`` over time with ReLU, ``MaxPooling1D``,
  another ``Conv1D``, ``LSTM`` (ReLU activation) returning sequences — which tf2onnx 1.17 leaves as the TF while
  loop, an ONNX ``Loop`` that ebr_onnx unrolls on load —, a per-step ``TimeDistributed(Dense)`` classifier;
* ``keras_transformer`` — a transformer encoder on feature frames: ``Dense`` embedding, ``LayerNormalization``,
  ``MultiHeadAttention``, a GELU MLP (the tanh approximation: tf2onnx has no ``Erfc``), residual ``Add`` layers,
  global average pooling over time, ``Dense``;
* ``keras_unet`` — a U-Net: two encoder levels, ``Conv2DTranspose`` and ``UpSampling2D`` decoder levels with skip
  ``Concatenate``, per-pixel 1×1 ``Conv2D`` class scores.

Weights are Keras's seeded initializers plus seeded noise (BatchNorm statistics too, so that nothing is an identity).
For each model ``<name>.onnx`` and ``<name>.npz`` are written; the npz holds ``inputs`` (the input to explain),
``output`` (Keras's output on it) and ``recurrent`` (whether the recurrent methods apply). Each ONNX file is tens of kB.

Run it in the TensorFlow virtualenv of ``tools/make_keras_fixtures.py`` (tensorflow-cpu 2.21.0, keras 3.15.1,
tf2onnx 1.17.0)::

    /tmp/tfenv/bin/python tools/make_keras_corpus.py            # writes tests/fixtures/keras/corpus/
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402
from make_keras_fixtures import export  # noqa: E402  (this folder is on the path when run as a script)

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "keras" / "corpus"


def conv_bn(x, filters: int, kernel: int = 3, strides: int = 1, activation: str | None = "relu"):
    x = layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation(activation)(x) if activation else x


def mobilenet() -> keras.Model:
    def block(x, expand: int, out: int, kernel: int, strides: int, se: bool, activation: str):
        c_in = x.shape[-1]
        h = conv_bn(x, expand, 1, activation=activation) if expand != c_in else x
        h = layers.DepthwiseConv2D(kernel, strides, padding="same", use_bias=False)(h)
        h = layers.Activation(activation)(layers.BatchNormalization()(h))
        if se:
            s = layers.GlobalAveragePooling2D(keepdims=True)(h)
            s = layers.Conv2D(max(2, expand // 4), 1, activation="relu")(s)
            s = layers.Conv2D(expand, 1, activation="hard_sigmoid")(s)
            h = layers.Multiply()([h, s])
        h = conv_bn(h, out, 1, activation=None)
        return layers.Add()([x, h]) if strides == 1 and c_in == out else h

    x = keras.Input((32, 32, 3), name="image")
    h = conv_bn(x, 8, 3, 2, activation="hard_swish")
    h = block(h, 8, 8, 3, 2, True, "relu")
    h = block(h, 24, 12, 3, 2, False, "relu")
    h = block(h, 32, 12, 5, 1, True, "hard_swish")
    h = conv_bn(h, 32, 1, activation="hard_swish")
    h = layers.GlobalAveragePooling2D()(h)
    h = layers.Dense(40, activation="hard_swish")(h)
    return keras.Model(x, layers.Dense(5)(layers.Dropout(0.2)(h)), name="keras_mobilenet")


def resnet() -> keras.Model:
    x = keras.Input((32, 32, 3), name="image")
    h = layers.MaxPooling2D(3, 2, padding="same")(conv_bn(x, 8, 3, 2))
    r = conv_bn(conv_bn(h, 8), 8, activation=None)
    h = layers.Activation("relu")(layers.Add()([h, r]))
    r = conv_bn(conv_bn(h, 16, 3, 2), 16, activation=None)
    h = layers.Activation("relu")(layers.Add()([conv_bn(h, 16, 1, 2, activation=None), r]))
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, layers.Dense(5)(h), name="keras_resnet")


def audio_lstm() -> keras.Model:
    x = keras.Input((16, 20), name="mel")                     # (time frames, mel bins)
    h = layers.Conv1D(12, 3, padding="same", activation="relu")(x)
    h = layers.MaxPooling1D(2)(h)
    h = layers.Conv1D(12, 3, padding="same", activation="relu")(h)
    h = layers.LSTM(8, activation="relu", return_sequences=True)(h)
    return keras.Model(x, layers.TimeDistributed(layers.Dense(4))(h), name="keras_audio_lstm")


def transformer() -> keras.Model:
    x = keras.Input((8, 12), name="frames")                   # (time, features)
    h = layers.Dense(16)(x)
    a = layers.MultiHeadAttention(num_heads=2, key_dim=8)(*(2 * [layers.LayerNormalization()(h)]))
    h = layers.Add()([h, a])
    m = layers.Dense(32)(layers.LayerNormalization()(h))
    m = layers.Activation(lambda v: keras.activations.gelu(v, approximate=True), name="gelu_tanh")(m)
    h = layers.Add()([h, layers.Dense(16)(m)])
    h = layers.GlobalAveragePooling1D()(layers.LayerNormalization()(h))
    return keras.Model(x, layers.Dense(5)(h), name="keras_transformer")


def unet() -> keras.Model:
    x = keras.Input((16, 16, 3), name="image")
    e1 = conv_bn(conv_bn(x, 4), 4)
    e2 = conv_bn(conv_bn(layers.MaxPooling2D(2)(e1), 8), 8)
    m = conv_bn(layers.MaxPooling2D(2)(e2), 16)
    d2 = layers.Concatenate()([layers.Conv2DTranspose(8, 2, 2)(m), e2])
    d2 = conv_bn(d2, 8)
    d1 = layers.Concatenate()([layers.Conv2D(4, 1)(layers.UpSampling2D(2, interpolation="bilinear")(d2)), e1])
    d1 = conv_bn(d1, 4)
    return keras.Model(x, layers.Conv2D(3, 1)(d1), name="keras_unet")


#: name → (builder, input shape without the batch axis, recurrent)
MODELS = {
    "keras_mobilenet": (mobilenet, (32, 32, 3), False),
    "keras_resnet": (resnet, (32, 32, 3), False),
    "keras_audio_lstm": (audio_lstm, (16, 20), True),
    "keras_transformer": (transformer, (8, 12), False),
    "keras_unet": (unet, (16, 16, 3), False),
}


def randomise(model: keras.Model, rng: np.random.Generator) -> None:
    """Seeded noise on every weight; BatchNorm variances kept positive."""
    for w in model.weights:
        noise = 0.1 * rng.standard_normal(w.shape).astype(np.float32)
        value = w.numpy() + noise
        if "variance" in w.path:
            value = np.abs(value) + 0.5
        w.assign(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default: tests/fixtures/keras/corpus)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (builder, shape, recurrent) in MODELS.items():
        keras.utils.set_random_seed(0)
        model = builder()
        randomise(model, np.random.default_rng(1))
        inputs = np.random.default_rng(0).random((1,) + shape, dtype=np.float32)
        spec = (tf.TensorSpec((1,) + shape, tf.float32, name=model.inputs[0].name),)
        export(model, args.out / f"{name}.onnx", spec)
        np.savez_compressed(args.out / f"{name}.npz", inputs=inputs, output=model(inputs, training=False).numpy(),
                            recurrent=recurrent)


if __name__ == "__main__":
    main()
