"""What ``ebr-onnx ground`` spends on its outputs against the explanation itself, on the bundled model.

``python benchmarks/bench_outputs.py`` grounds a generated 128-frame rand+GT+rand video (8 clips of 16 frames) at its
own 64×64 and upscaled to 240×320 (a typical video's size; the model's preprocessing resizes it back), once per
output setting, and prints the times that ``summary.json`` records: the explanation (the explain calls), the outputs
(maps and summaries, overlays, sheets, GIFs, the evidence plot) and their ratio. Best of ``--repeats`` runs, all in
this process, after one warm-up run (sessions, matplotlib's font cache).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ebr_onnx.app.demo import bundled_model
from ebr_onnx.app.pipeline import GroundOptions, ground
from ebr_onnx.app.synthetic import make_concatenated

SETTINGS = {
    "all outputs": GroundOptions(target="growing", quiet=True, source_fps=25.0),
    "--no-gif": GroundOptions(target="growing", quiet=True, source_fps=25.0, animations=()),
    "--no-overlays": GroundOptions(target="growing", quiet=True, source_fps=25.0, pictures=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    frames = make_concatenated(1, "rand+GT+rand", frames=128, gt_length=41).frames
    videos = {"64×64": frames,
              "240×320": np.stack([np.asarray(Image.fromarray(f).resize((320, 240), Image.BILINEAR)) for f in frames])}
    model = bundled_model()
    print(f"{'video':8} {'setting':14} {'explanation s':>13} {'outputs s':>9} {'outputs / explanation':>22}")
    for size, video in videos.items():
        for name, options in SETTINGS.items():
            runs = []
            with tempfile.TemporaryDirectory() as folder:
                for k in range(args.repeats + 1):
                    seconds = ground(model, video, Path(folder) / str(k), options)["seconds"]
                    runs.append((seconds["explanation"], seconds["outputs"]))
            explanation, outputs = min(runs[1:], key=lambda r: r[1])
            print(f"{size:8} {name:14} {explanation:13.3f} {outputs:9.3f} {outputs / explanation:22.1f}")


if __name__ == "__main__":
    main()
