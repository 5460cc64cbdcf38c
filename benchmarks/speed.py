"""Compute time of embedding and extraction on a real 512² CT slice, after the model is loaded.

    .venv/bin/python benchmarks/speed.py [--model PATH] [--repeats 20] [--write-card]

Prints the median and best wall time of: the encoder alone; `embed_pixels` (encoder + payload
coding + quality guard, i.e. everything but file I/O); `read_frames` on the marked image (decoder
with the crop-offset search + payload decoding); and `read_frames` on the unmarked original, the
worst case, where every search is tried before "no watermark". File reading and writing are
excluded on purpose: they depend on the disk, not on wm.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from watermark_cli.data.clinical import clinical_file
from watermark_cli.model.inputs import normalised_frames
from watermark_cli.io.image import read_image
from watermark_cli.model.store import load_model, write_card
from watermark_cli.quality import QualityFloor
from watermark_cli.marking.image import codec_for, embed_pixels, read_frames, residual_for


def timed(function, repeats: int) -> tuple[float, float]:
    function()  # warm-up: first calls allocate and pick kernels
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e3, min(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--file", default="693_UNCR.dcm", help="pydicom-data file (default: a 512² CT)")
    parser.add_argument("--write-card", action="store_true",
                        help="store the figures in the model's card.yaml (measure on an idle machine)")
    args = parser.parse_args()

    model = load_model(args.model)
    codec = codec_for(model, None)
    image = read_image(clinical_file(args.file))
    message = b"benchmark-0001"
    bits = codec.encode(message)
    marked = embed_pixels(model, codec, image, message, QualityFloor(40.0)).pixels
    marked_frames = normalised_frames(type(image)(**{**image.__dict__, "pixels": marked}))
    assert read_frames(model, codec, marked_frames).decoded.message == message

    print(f"{args.file}: {image.pixels.shape[1]}×{image.pixels.shape[2]}, {image.n_frames} frame(s); "
          f"torch threads {torch.get_num_threads()}; model {model.name}")
    figures = {}
    for key, name, function in (
        ("encoder", "encoder only", lambda: residual_for(model, image, bits, codec)),
        ("embed", "embed (encode + guard)",
         lambda: embed_pixels(model, codec, image, message, QualityFloor(40.0))),
        ("extract", "extract (decode + payload)", lambda: read_frames(model, codec, marked_frames)),
        # The worst case: nothing is found, so every grid offset, the rescale and the rotation are tried.
        ("extract_unmarked", "extract, unmarked original", lambda: read_frames(model, codec, normalised_frames(image))),
    ):
        median, best = timed(function, args.repeats)
        figures[key] = {"median_ms": round(median, 1), "best_ms": round(best, 1)}
        print(f"{name:<28} median {median:7.1f} ms   best {best:7.1f} ms")
    if args.write_card:
        card = dict(model.card)
        card.setdefault("figures", {})["speed"] = {
            "command": "python benchmarks/speed.py --write-card",
            "image": f"{args.file} ({image.pixels.shape[1]}×{image.pixels.shape[2]})",
            "cpu": f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
            "repeats": args.repeats,
            "measured_in": "embed as default wm embed does it: the view floor (6 views of a CT), payload format 2",
            **figures,
        }
        write_card(model.path, card)


if __name__ == "__main__":
    main()
