"""The README's picture of what a mark looks like: original, marked, ×10 difference, each in its view.

    .venv/bin/python docs/make_figures.py [--model PATH] [--out docs/images/view_floor.png]

Marks a CT (693_UNCR), an MR (MR2_UNCR) and an NM scan (JPEG2000_UNC) of pydicom-data's held-out
split exactly as default `wm embed` does (view floor, 40 dB) and shows each frame in the view
that bound its mark: the CT in its brain preset, the MR in its declared window, the NM (which
declares none) stretched over its own data range. The difference is amplified ×10 in that view
(mid-grey: no change), the convention of `wm evaluate`'s report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from watermark_cli.data.clinical import clinical_file
from watermark_cli.evaluation.report import DIFFERENCE_GAIN, amplified_difference
from watermark_cli.io.image import read_image
from watermark_cli.model.store import load_model
from watermark_cli.quality import QualityFloor
from watermark_cli.marking.image import codec_for, embed_pixels

CASES = (("CT", "693_UNCR.dcm"), ("MR", "MR2_UNCR.dcm"), ("NM", "JPEG2000_UNC.dcm"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "images" / "view_floor.png")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = load_model(args.model)
    codec = codec_for(model, None)
    figure, axes = plt.subplots(len(CASES), 3, figsize=(11, 3.7 * len(CASES)), squeeze=False)
    for (modality, name), row in zip(CASES, axes):
        image = read_image(clinical_file(name))
        outcome = embed_pixels(model, codec, image, b"audit:7f3a9c", QualityFloor(40.0))
        quality = outcome.frames[0].quality
        view = outcome.meters[0].view_named(quality.binding_view)
        original, marked = view.display(image.pixels[0]), view.display(outcome.pixels[0])
        row[0].imshow(np.clip(original, 0, 1), cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"{modality} {name}\nin its {view.name}", fontsize=9)
        row[1].imshow(np.clip(marked, 0, 1), cmap="gray", vmin=0, vmax=1)
        others = [value for name, value in quality.views.items() if name != quality.binding_view]
        rest = (f"its {len(others)} other view{'s' if len(others) > 1 else ''} ≥ {min(others):.2f} dB"
                if others else "its only view")
        row[1].set_title(f"marked: {quality.psnr:.2f} dB in that view\n({rest})", fontsize=9)
        row[2].imshow(amplified_difference(original, marked), cmap="gray", vmin=0, vmax=1)
        row[2].set_title(f"difference ×{DIFFERENCE_GAIN:g} in that view", fontsize=9)
        for axis in row:
            axis.axis("off")
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
