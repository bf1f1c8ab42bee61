"""The application: the ``ebr-onnx`` command (:mod:`.cli`), grounding a video (:mod:`.pipeline`: video I/O,
preprocessing, localisation, overlays and result files), the demo, ``inspect``, the paper's metrics and the
synthetic action videos."""
