"""Write the Keras/TensorFlow test fixtures in ``tests/fixtures/keras/``: tiny video models exported with tf2onnx.

Each model is a per-frame CNN (``TimeDistributed`` Conv2D + ReLU, MaxPool, Flatten) on a channels-last clip
(N=1, T=6, 16×16×3), a recurrent layer with 8 units, and a linear 4-class classifier at every step
(``TimeDistributed(Dense)``): ``lstm_seq`` (LSTM with ``activation="relu"``), ``gru_seq``, ``bigru_seq``
(``Bidirectional(GRU)``), ``bilstm_seq``; and ``lstm_last``, whose classifier sees the last step only
(``return_sequences=False``).
Weights are Keras's seeded initializers plus seeded noise (so that biases are not zero).

For each model ``<name>.onnx`` and ``<name>.npz`` are written; the npz holds

* ``clip`` — the input, (1, T, H, W, C) float32;
* ``output`` — Keras's output (pre-softmax logits);
* ``conv`` — the first conv layer's output (after its ReLU), (1, T, H, W, 4);
* ``grad_input`` / ``grad_conv`` — TensorFlow's ``GradientTape`` gradient of the target logit (class 1, last step)
  w.r.t. the clip and w.r.t. ``conv``.

TensorFlow does not belong in ebr_onnx's environment (size, and its protobuf pin): run this in its own virtualenv.
Worked with tensorflow-cpu 2.21.0, keras 3.15.1, tf2onnx 1.17.0 (onnx 1.23.2, protobuf 7.36.2, numpy 2.4) on
Python 3.11, where ``tf2onnx.convert.from_keras`` accepts Keras 3 models directly::

    python -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0    # or: pip install '.[tf]'
    /tmp/tfenv/bin/python tools/make_keras_fixtures.py            # writes tests/fixtures/keras/

What tf2onnx 1.17 makes of these layers: ``TimeDistributed`` becomes one copy per frame (Slice + Squeeze of the
time-major clip, Transpose to NCHW, Conv …, then Unsqueeze + Concat), for the classifier too; ``LSTM`` (also with
``activation="relu"``) and ``Bidirectional(LSTM)`` become one fused ``LSTM`` op; Keras 3's ``GRU``
(``reset_after=True``) is not matched by tf2onnx's GRU rewriter and stays the TF while loop, an ONNX ``Loop`` (two,
with ``ReverseSequence``, for ``Bidirectional(GRU)``), which :func:`ebr_onnx.passes.unroll.unroll_loops` unrolls.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402

T, H, W, C = 6, 16, 16, 3
UNITS, CLASSES, FILTERS = 8, 4, 4
TARGET = 1
OPSET = 17
FIXTURES = (("lstm", True), ("gru", True), ("bigru", True), ("bilstm", True), ("lstm", False))
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "keras"


def recurrent(kind: str, sequences: bool) -> keras.layers.Layer:
    """The recurrent layer of one fixture."""
    layers = {
        "lstm": lambda: keras.layers.LSTM(UNITS, activation="relu", return_sequences=sequences),
        "gru": lambda: keras.layers.GRU(UNITS, return_sequences=sequences),
        "bigru": lambda: keras.layers.Bidirectional(keras.layers.GRU(UNITS, return_sequences=sequences)),
        "bilstm": lambda: keras.layers.Bidirectional(keras.layers.LSTM(UNITS, return_sequences=sequences)),
    }
    return layers[kind]()


def build(kind: str, sequences: bool) -> keras.Model:
    """CNN per frame → recurrent layer → linear classifier (per step or on the last step)."""
    x = keras.Input((T, H, W, C), name="clip")
    h = keras.layers.TimeDistributed(keras.layers.Conv2D(FILTERS, 3, padding="same", activation="relu"),
                                     name="conv1")(x)
    h = keras.layers.TimeDistributed(keras.layers.MaxPooling2D(4), name="pool1")(h)
    h = keras.layers.TimeDistributed(keras.layers.Flatten(), name="flatten")(h)
    h = recurrent(kind, sequences)(h)
    dense = keras.layers.Dense(CLASSES, name="fc")
    y = keras.layers.TimeDistributed(dense, name="fc_steps")(h) if sequences else dense(h)
    model = keras.Model(x, y, name=f"{kind}_{'seq' if sequences else 'last'}")
    rng = np.random.default_rng(1)
    for w in model.weights:
        w.assign(w.numpy() + 0.1 * rng.standard_normal(w.shape).astype(np.float32))
    return model


def target_logit(y: tf.Tensor) -> tf.Tensor:
    """Class ``TARGET`` at the last step (or of the single output)."""
    return y[0, -1, TARGET] if len(y.shape) == 3 else y[0, TARGET]


def gradients(model: keras.Model, clip: np.ndarray) -> dict[str, np.ndarray]:
    """Keras's output, the conv activations, and the target logit's gradients w.r.t. the clip and the conv output."""
    x = tf.constant(clip)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        h = conv = model.layers[1](x)
        for layer in model.layers[2:]:
            h = layer(h)
        logit = target_logit(h)
    output = model(x).numpy()
    np.testing.assert_allclose(h.numpy(), output, atol=1e-6)
    return {
        "output": output,
        "conv": conv.numpy(),
        "grad_input": tape.gradient(logit, x).numpy(),
        "grad_conv": tape.gradient(logit, conv).numpy(),
    }


def export(model: keras.Model, path: Path, spec: tuple | None = None) -> None:
    """``model`` as ONNX at ``path`` (tf2onnx), for inputs of ``spec`` (default: a batch of this script's clips)."""
    spec = spec or (tf.TensorSpec((None, T, H, W, C), tf.float32, name="clip"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    proto.doc_string = f"{model.name}: tf2onnx {tf2onnx.__version__}, Keras {keras.__version__}, TF {tf.__version__}"
    path.write_bytes(proto.SerializeToString())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default: tests/fixtures/keras)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    clip = np.random.default_rng(0).random((1, T, H, W, C), dtype=np.float32)
    for kind, sequences in FIXTURES:
        keras.utils.set_random_seed(0)
        model = build(kind, sequences)
        export(model, args.out / f"{model.name}.onnx")
        np.savez_compressed(args.out / f"{model.name}.npz", clip=clip, **gradients(model, clip))


if __name__ == "__main__":
    main()
