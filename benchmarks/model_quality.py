"""Robustness of a model on held-out real images, marked by default `wm embed` (the view floor).

    .venv/bin/python benchmarks/model_quality.py [--model PATH] [--set files,slices]
        [--messages 5] [--message-bytes 8,16] [--attacks LIST] [--write-card] [--sizes]

For each image set (see benchmarks/heldout.py: whole held-out files per modality, and 256² 8-bit
slices with a mostly black background) and each message length, prints: how many images and
trials, the PSNR of the written frames in their binding view, frames below the floor in any view
(must be 0), false positives on the unmarked originals; then one row per attack: raw bit
accuracy, exact payload recovery with its one-sided 95 % lower bound (Clopper–Pearson), and the
issue-11 target with whether it is met. Attacks act in the view each frame was budgeted in.

--sizes instead measures the smallest frame a mark can be read back from: crops of the held-out
files at several sides, identity only (the figure behind `marking.image.TILES_PER_SIDE_TO_MARK`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import Counter
from dataclasses import replace
from functools import partial

import numpy as np

import heldout
from watermark_cli.attacks.codecs import parse_attack_list
from watermark_cli.data.clinical import clinical_files
from watermark_cli.evaluation.run import EvaluationOptions, evaluate_images
from watermark_cli.io.image import read_image
from watermark_cli.model.store import load_model, write_card
from watermark_cli.quality import QualityFloor


def run_set(model, set_name: str, message_bytes: int, messages: int, attacks: str, psnr_min: float) -> dict:
    options = EvaluationOptions(floor=QualityFloor(psnr_min), attacks=parse_attack_list(attacks), messages=messages,
                                seed=0, message_bytes=message_bytes)
    started = time.perf_counter()
    summary, rows, _ = evaluate_images(heldout.sources(set_name), model, options)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    failures: dict[str, Counter] = {}
    for row in rows:
        if not row["payload_recovered"]:
            failures.setdefault(row["attack"], Counter())[row["path"]] += 1
    summary["failed_images"] = {attack: dict(counts.most_common(4)) for attack, counts in failures.items()}
    for name, figures in summary["attacks"].items():
        recovered = round(figures["payload_recovery"] * figures["n"])
        figures["target"] = heldout.TARGETS.get(name)
        figures["verdict"] = heldout.verdict(name, *heldout.recovery_with_bound(recovered, figures["n"]))
    return summary


def print_set(model, set_name: str, message_bytes: int, summary: dict) -> None:
    psnr = summary["psnr"]
    detection = summary["detection"]
    print(f"\n== {set_name}: {summary['n_images']} images × {summary['messages_per_image']} messages of "
          f"{message_bytes} bytes; model {model.name}; {summary['seconds']:.0f} s")
    print(f"written frames {summary['n_frames_marked']}: PSNR in the binding view min {psnr['min']:.2f}, median "
          f"{psnr['median']:.2f} dB (binding views: {summary['psnr_peak']}); below the floor in any view: "
          f"{summary['below_floor']}; guard shrank {summary['guard_acted']}; false positives "
          f"{detection['false_positives']} / {detection['n_clean']}")
    width = max([14, *(len(name) + 2 for name in summary["attacks"])])
    header = (f"{'attack':<{width}}{'bit accuracy':>13}{'exact recovery':>16}{'n':>6}{'95 % lower':>12}"
              f"   target (set for 8-byte IDs)")
    print(header)
    print("-" * len(header))
    for name, figures in summary["attacks"].items():
        print(f"{name:<{width}}{figures['bit_accuracy']:>13.4%}{figures['payload_recovery']:>16.2%}{figures['n']:>6}"
              f"{figures['payload_recovery_lower_95']:>12.2%}   {figures['verdict']}")
    for attack, images in summary["failed_images"].items():
        if heldout.TARGETS.get(attack):
            shown = ", ".join(f"{path} ×{count}" for path, count in images.items())
            print(f"  {attack} failed on: {shown}")
    for item in summary["skipped"]:
        print(f"  skipped {item['path']}: {item['reason']}")


def size_sweep(model, sides: list[int], crops_per_file: int, psnr_min: float) -> dict:
    """Identity recovery of 8-byte messages on square crops of the held-out files, by side."""
    results = {}
    for side in sides:
        sources = []
        for group, path in clinical_files("held_out"):
            image = read_image(path)
            frame = image.pixels[0]
            rng = np.random.default_rng(side)
            for _ in range(crops_per_file):
                top = int(rng.integers(0, frame.shape[0] - side + 1))
                left = int(rng.integers(0, frame.shape[1] - side + 1))
                pixels = frame[top : top + side, left : left + side][None].copy()
                sources.append((f"{path.name}@{top},{left}", partial(lambda im, px: replace(im, pixels=px), image, pixels)))
        options = EvaluationOptions(floor=QualityFloor(psnr_min), attacks=parse_attack_list("identity"), messages=2,
                                    message_bytes=8)
        # Crops below the marking minimum are measured all the same: this is what sets it.
        import watermark_cli.marking.image as watermarking

        saved = watermarking.TILES_PER_SIDE_TO_MARK
        watermarking.TILES_PER_SIDE_TO_MARK = 1
        try:
            summary, _, _ = evaluate_images(sources, model, options)
        finally:
            watermarking.TILES_PER_SIDE_TO_MARK = saved
        figures = summary["attacks"]["identity"]
        results[side] = {"bit_accuracy": round(figures["bit_accuracy"], 5),
                         "payload_recovery": round(figures["payload_recovery"], 4), "n": figures["n"]}
        print(f"side {side:>4}: identity recovery {figures['payload_recovery']:.1%} (bits {figures['bit_accuracy']:.2%}), "
              f"n {figures['n']}", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped default model)")
    parser.add_argument("--set", default="files,slices", help="image sets: files, slices (comma-separated)")
    parser.add_argument("--messages", type=int, default=5, help="messages per image")
    parser.add_argument("--message-bytes", default="8,16", help="message lengths to measure (comma-separated)")
    parser.add_argument("--attacks", default=heldout.ATTACKS)
    parser.add_argument("--psnr-min", type=float, default=40.0)
    parser.add_argument("--sizes", action="store_true", help="measure the smallest markable frame instead")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--write-card", action="store_true", help="store the figures in the model's card.yaml")
    parser.add_argument("--name", default=None, help="with --write-card: also set the model's name")
    args = parser.parse_args()

    model = load_model(args.model)
    command = "python benchmarks/model_quality.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    card = dict(model.card)
    figures_block = card.setdefault("figures", {})
    if args.sizes:
        results = size_sweep(model, [64, 96, 128, 192, 256], 8, args.psnr_min)
        figures_block["smallest_markable_frame"] = {
            "command": command, "measured_in": "binding view of each crop (view floor), identity, 8-byte messages",
            "by_side": results}
    else:
        measured: dict = {}
        for set_name in args.set.split(","):
            for length in (int(n) for n in args.message_bytes.split(",")):
                summary = run_set(model, set_name, length, args.messages, args.attacks, args.psnr_min)
                measured.setdefault(set_name, {})[f"{length}_byte_messages"] = summary
                if not args.json:
                    print_set(model, set_name, length, summary)
        if args.json:
            print(json.dumps(measured, indent=2, default=str))
        figures_block["held_out_view_floor"] = {
            "command": command,
            "measured_in": "default wm embed (view floor: every frame >= the floor in its data range, declared "
                           "windows and CT presets); each attack in the frame's binding view",
            **{set_name: {length: _card_figures(summary) for length, summary in by_length.items()}
               for set_name, by_length in measured.items()},
        }
    if args.write_card:
        if args.name:
            card["name"] = args.name
        write_card(model.path, card)
    return 0


def _card_figures(summary: dict) -> dict:
    return {
        "images": summary["n_images"],
        "messages_per_image": summary["messages_per_image"],
        "psnr_binding_view_db": {k: round(v, 3) for k, v in summary["psnr"].items()},
        "binding_views": summary["binding_views"],
        "below_floor_any_view": summary["below_floor"],
        "false_positives": f"{summary['detection']['false_positives']} / {summary['detection']['n_clean']}",
        "attacks": {name: {"bit_accuracy": round(f["bit_accuracy"], 5), "payload_recovery": round(f["payload_recovery"], 4),
                           "lower_95": round(f["payload_recovery_lower_95"], 4), "n": f["n"]}
                    for name, f in summary["attacks"].items()},
    }


if __name__ == "__main__":
    sys.exit(main())
