"""Regenerate README's pictures: ``python docs/make_pictures.py`` runs ``ebr-onnx demo`` (its default video) into a
temporary folder and saves its evidence plot and contact sheet here as ``demo_evidence.png`` and ``demo_sheet.png``,
reduced to 256 colours to keep the repository small."""
from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image

from ebr_onnx.app.cli import main

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "demo"
        if main(["demo", "--out", str(out), "--quiet"]) != 0:
            raise SystemExit("ebr-onnx demo failed")
        for source, name in ((out / "evidence.png", "demo_evidence.png"), (out / "clip_000" / "sheet.png",
                                                                            "demo_sheet.png")):
            with Image.open(source) as picture:
                picture.convert("RGB").quantize(256).save(HERE / name, optimize=True)
    print(f"wrote {HERE / 'demo_evidence.png'} and {HERE / 'demo_sheet.png'}")
