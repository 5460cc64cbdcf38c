"""Small frames: how many frames of a given side a multi-frame instance needs to be read back.

    .venv/bin/python benchmarks/small_frames.py [--sides 64,96,128] [--frames 1,2,4,8] [--stacks 4]
        [--messages 2] [--attacks identity,jpeg:80] [--unchecked] [--unfitted] [--seed 0]
        [--split held_out|unseen|train] [--no-emri] [--by-image]
        [--model NAME|PATH]

Material (held-out, never trained on): stacks of k square crops of one held-out pydicom-data file
(CT, MR, CR, NM, US, ...; `--split unseen`: of the real images in neither split, a CT and dipy's
MR slices, `heldout.unseen_images`, for figures beyond the six held-out files), each crop
textured (its sd at least 2 % of the file's 1st..99th percentile span), standing for the frames
of a nuclear-medicine, cine or diffusion series. That rule alone passes nearly flat crops too (the
ultrasound's black background with a few strokes of white annotation text: the strokes' contrast
gives the sd), so stacks with at least 90 % of their pixels at one value
(`heldout.NEARLY_FLAT_SHARE`) get a row of their own, "nearly flat", beside the textured ones:
every crop is measured and printed, none is dropped; and pydicom-data's `emri_small` (10
frames of 64² MR) in its three encodings (explicit little endian, RLE, big endian). Each is marked by default `wm embed`
settings (view floor 40 dB) with 8-byte messages and read back as one instance (every frame's
evidence together). Refusals by the size rule count as misses, unless `--unchecked` (which
measures without the rule: what sets it; `--unfitted`, without fitting the mark to its host:
the encoder's mark alone; `--split train`, crops of the training split's files, to tune on).
Printed per side × frames: trials, frames below the
floor (must be 0), marks that are the fragile one (`marking.fragile`: where the robust mark did
not read back; any change of the values removes it), and exact recovery per attack with its
one-sided 95 % lower bound; with `--by-image`, the first attack's recoveries per image the crops
were cut from (where the misses are).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from functools import partial

import numpy as np

from heldout import NEARLY_FLAT_SHARE, most_common_share, textured_cuts, unseen_images
from watermark_cli.attacks.codecs import parse_attack_list
from watermark_cli.data.clinical import clinical_file, clinical_files
from watermark_cli.evaluation.run import EvaluationOptions, evaluate_images, upper_bound_95
from watermark_cli.io.image import read_image
from watermark_cli.model.store import load_model
from watermark_cli.quality import QualityFloor

EMRI = ("emri_small.dcm", "emri_small_RLE.dcm", "emri_small_big_endian.dcm")


def textured_stacks(side: int, frames: int, stacks: int, seed: int, split: str = "held_out") -> list:
    """(label, loader) sources: `stacks` stacks of `frames` textured crops per image of `split`
    (held-out files by default; "train" to tune on; "unseen": the real images in neither split,
    `heldout.unseen_images`). A frame of exactly `side` px gives one stack: it has one crop."""
    if split == "unseen":
        images = unseen_images()
    else:
        images = [(path.name, read_image(path)) for _, path in clinical_files(split)]
    sources = []
    for label, image in images:
        frame = image.pixels[image.n_frames // 2]
        if min(frame.shape) < side:
            continue
        rng = np.random.default_rng([seed, side, frames])
        for stack in range(stacks if max(frame.shape) > side else 1):
            crops = textured_cuts(frame, side, frames, rng)
            if len(crops) == frames:
                pixels = np.stack(crops).copy()
                sources.append((f"{label}#{stack}", partial(lambda im, px: replace(im, pixels=px), image, pixels)))
    return sources


def measure(model, sources, attacks: str, messages: int, psnr_min: float, unchecked: bool,
            unfitted: bool = False) -> dict:
    import watermark_cli.marking.image as marking

    options = EvaluationOptions(floor=QualityFloor(psnr_min), attacks=parse_attack_list(attacks), messages=messages,
                                message_bytes=8)
    saved = marking.check_markable_size, marking.FITTED_BELOW_SIDE
    if unchecked:
        marking.check_markable_size = lambda image, tile: None
    if unfitted:
        marking.FITTED_BELOW_SIDE = 0
    try:
        summary, rows, _ = evaluate_images(sources, model, options)
    finally:
        marking.check_markable_size, marking.FITTED_BELOW_SIDE = saved
    refused = len(summary["skipped"]) * messages
    figures = {}
    for name, result in summary["attacks"].items():
        trials = result["n"] + refused
        recovered = round(result["payload_recovery"] * result["n"])
        figures[name] = (recovered, trials, 1.0 - upper_bound_95(trials - recovered, trials))
    # Exact recoveries as marked (the first attack) per image the crops were cut from; refusals count as misses.
    by_image: dict[str, list[int]] = {}
    for row in rows:
        if row["attack"] == options.attacks[0].label:
            counts = by_image.setdefault(row["path"].rsplit("#", 1)[0], [0, 0])
            counts[0] += int(row["payload_recovered"])
            counts[1] += 1
    for skipped in summary["skipped"]:
        by_image.setdefault(skipped["path"].rsplit("#", 1)[0], [0, 0])[1] += messages
    return {"figures": figures, "below_floor": summary["below_floor"], "refused": len(summary["skipped"]),
            "psnr_min": summary["psnr"]["min"], "fragile": summary["fragile_marks"], "by_image": by_image}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default="64,96,128")
    parser.add_argument("--frames", default="1,2,4,8")
    parser.add_argument("--stacks", type=int, default=4, help="stacks per held-out file")
    parser.add_argument("--messages", type=int, default=2)
    parser.add_argument("--attacks", default="identity,jpeg:80")
    parser.add_argument("--psnr-min", type=float, default=40.0)
    parser.add_argument("--unchecked", action="store_true", help="measure without the size rule")
    parser.add_argument("--unfitted", action="store_true",
                        help="the encoder's mark alone, not fitted to its host (marking.host_fit): for comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="held_out", choices=("held_out", "unseen", "train"),
                        help="whose crops: held_out (the held-out files), unseen (real images in neither split: "
                             "heldout.unseen_images), train (to tune on; figures come from the other two)")
    parser.add_argument("--no-emri", action="store_true", help="leave out the emri_small instances")
    parser.add_argument("--by-image", action="store_true",
                        help="also print each row's first attack's recoveries per image the crops came from")
    parser.add_argument("--model", default=None, help="a model folder or name (default: the shipped default)")
    args = parser.parse_args()
    model = load_model(args.model)
    attack_names = args.attacks.split(",")
    print("| material | frames | trials | refused | below floor | fragile | " + " | ".join(attack_names) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(attack_names))

    def row(label: str, frames: int, result: dict) -> None:
        cells, trials = [], max(result["figures"].get(name, (0, 0, 0))[1] for name in attack_names)
        for name in attack_names:
            recovered, trials, lower = result["figures"].get(name, (0, 0, 0.0))
            cells.append(f"{recovered}/{trials} (≥ {lower:.1%})")
        print(f"| {label} | {frames} | {trials} | {result['refused']} | {result['below_floor']} | {result['fragile']} | "
              + " | ".join(cells) + " |", flush=True)
        if args.by_image:
            print("  " + attack_names[0] + " by image: " + ", ".join(
                f"{name} {done}/{count}" for name, (done, count) in sorted(result["by_image"].items())), flush=True)

    for side in (int(s) for s in args.sides.split(",")):
        for frames in (int(k) for k in args.frames.split(",")):
            sources = textured_stacks(side, frames, args.stacks, args.seed, args.split)
            flat = [most_common_share(load().pixels) >= NEARLY_FLAT_SHARE for _, load in sources]
            label = f"{args.split.replace('_', '-')} crops {side}²"
            for name, chosen in ((label, [s for s, f in zip(sources, flat) if not f]),
                                 (f"{label}, nearly flat (≥ {NEARLY_FLAT_SHARE:.0%} one value)",
                                  [s for s, f in zip(sources, flat) if f])):
                if chosen:
                    row(name, frames, measure(model, chosen, args.attacks, args.messages, args.psnr_min,
                                              args.unchecked, args.unfitted))
    for name in () if args.no_emri else EMRI:
        path = clinical_file(name)
        sources = [(name, partial(read_image, path))]
        row(f"`{name}` (64² MR)", read_image(path).n_frames,
            measure(model, sources, args.attacks, max(args.messages, 6), args.psnr_min, args.unchecked, args.unfitted))


if __name__ == "__main__":
    main()
