"""Quality and robustness of a model on the held-out real images of pydicom-data.

    .venv/bin/python benchmarks/model_quality.py [--model PATH] [--messages 5] [--tiles]

Prints one table: a row per attack (identity first, then graded strengths), columns raw bit
accuracy, exact payload recovery, and the PSNR of the written frames (min, median; nominal peak,
stored values). Images: one file per held-out image group (CT, MR, CR, NM, US; see
watermark_cli/clinical_data.py), each marked with several fixed full-length messages. With
--tiles, every held-out frame is also cut into 256² sub-images that are evaluated as images of
their own, which gives hundreds of trials instead of a handful.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from functools import partial


from watermark_cli.attacks import parse_attack_list
from watermark_cli.clinical_data import clinical_files
from watermark_cli.evaluation import EvaluationOptions, evaluate_images
from watermark_cli.image_io import read_image
from watermark_cli.model_store import load_model, write_card
from watermark_cli.quality import QualityFloor

TARGET_ATTACKS = (
    "identity,png16,window8,jpeg:95,jpeg:90,jpeg:80,jpeg:70,jpeg:50,"
    "noise:0.005,noise:0.01,noise:0.02,blur:0.5,blur:1.0,contrast:0.2,"
    "resize:0.9,resize:0.75,resize:0.5,crop:0.9,crop:0.7,crop:0.5,rotate:1"
)


def held_out_sources(tiles: bool, tile_size: int = 256):
    sources = []
    for group, path in clinical_files("held_out"):
        image = read_image(path)
        sources.append((f"{group.modality} {path.name}", partial(lambda im: im, image)))
        if not tiles:
            continue
        for frame_index, frame in enumerate(image.pixels):
            for top in range(0, frame.shape[0] - tile_size + 1, tile_size):
                for left in range(0, frame.shape[1] - tile_size + 1, tile_size):
                    sub = frame[top : top + tile_size, left : left + tile_size][None].copy()
                    label = f"{group.modality} {path.name}[{frame_index}]@{top},{left}"
                    sources.append((label, partial(lambda im, px: replace(im, pixels=px), image, sub)))
    return sources


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped default model)")
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--attacks", default=TARGET_ATTACKS)
    parser.add_argument("--psnr-min", type=float, default=40.0)
    parser.add_argument("--tiles", action="store_true", help="also evaluate 256² sub-images of the held-out frames")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--write-card", action="store_true",
                        help="store the figures in the model's card.yaml (whole files and --tiles under separate keys)")
    parser.add_argument("--name", default=None, help="with --write-card: also set the model's name")
    args = parser.parse_args()

    model = load_model(args.model)
    options = EvaluationOptions(floor=QualityFloor(args.psnr_min), attacks=parse_attack_list(args.attacks),
                                messages=args.messages, seed=0)
    sources = held_out_sources(args.tiles)
    started = time.perf_counter()
    summary, rows, frame_psnrs = evaluate_images(sources, model, options)
    seconds = time.perf_counter() - started
    if args.write_card:
        card = dict(model.card)
        if args.name:
            card["name"] = args.name
        # Whole files and the 256² sub-image run are kept side by side, each with its own command.
        key = "held_out_256_subimages" if args.tiles else "held_out_real_images"
        card.setdefault("figures", {})[key] = {
            "command": "python benchmarks/model_quality.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "images": len(sources) if args.tiles else [label for label, _ in sources],
            "messages_per_image": args.messages,
            "psnr_db": {k: round(v, 3) for k, v in summary["psnr"].items()},
            "below_floor": summary["below_floor"],
            "guard_acted": summary["guard_acted"],
            "false_positives": f"{summary['detection']['false_positives']} / {summary['detection']['n_clean']}",
            "attacks": {name: {"bit_accuracy": round(f["bit_accuracy"], 5),
                               "payload_recovery": round(f["payload_recovery"], 4), "n": f["n"]}
                        for name, f in summary["attacks"].items()},
        }
        write_card(model.path, card)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0

    psnr = summary["psnr"]
    print(f"model: {model.name} ({model.path}); images: {summary['n_images']} held-out "
          f"({'whole files + 256² sub-images' if args.tiles else 'whole files'}), {args.messages} messages each; "
          f"floor {args.psnr_min:g} dB, nominal peak; {seconds:.0f} s")
    print(f"written frames: {summary['n_frames_marked']}, below floor: {summary['below_floor']}, "
          f"guard acted: {summary['guard_acted']}; false positives on originals: "
          f"{summary['detection']['false_positives']} / {summary['detection']['n_clean']}")
    width = max([14, *(len(name) + 2 for name in summary["attacks"])])
    header = f"{'attack':<{width}}{'bit accuracy':>14}{'exact recovery':>16}{'n':>7}{'PSNR min':>10}{'PSNR median':>13}"
    print(header)
    print("-" * len(header))
    for name, figures in summary["attacks"].items():
        print(f"{name:<{width}}{figures['bit_accuracy']:>14.4%}{figures['payload_recovery']:>16.2%}{figures['n']:>7}"
              f"{psnr['min']:>10.2f}{psnr['median']:>13.2f}")
    skipped = summary["skipped"]
    if skipped:
        print(f"skipped {len(skipped)}: " + "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
