"""How long wm takes per image on this machine: where an embed's time goes, and what one more
512² CT costs a whole `wm embed` or `wm extract` run.

    .venv/bin/python benchmarks/speed.py [--repeats 10] [--marginal 40] [--marginal-runs 3] [--others]
        [--device auto|cpu|cuda] [--networks B] [--write-card]

**Stages** (in this process, model loaded, median of --repeats after a warm-up): what default
`wm embed` does to one file, stage by stage — decode (read the file), views (the meters of every
view a reader uses), encoder, guard (the mark spread over the views, then scaled to the floor),
self-check (the mark read back from the marked values), record (binding and sealed restoration
record), and the rest of `embed_file` (the file written, read back, its record, binding and
values checked, re-measured in every view, hashed) — and the reads:
extract on the marked values, and on the unmarked original, where every search is tried before
"no watermark".

**Marginal** (whole processes, as a user runs them): `wm embed`, `wm extract` on unmarked copies
and on marked copies, each on a folder of 1 and of N copies of the CT with a generated key:
(T(N) − T(1)) / (N − 1), so start-up and model loading cancel out; each figure is the median
of --marginal-runs such measurements (runs on a shared machine vary by several ms a copy).
Goal (issue 30): at most 100 ms each on 2 cores. Measure on an idle machine. Also images a
second end to end: N / T(N), start-up and model loading included.

**Networks alone** (`--networks B`): 512² frames B at a time through the encoder and the
decoder's read (feature maps, key field, fold, read-out), on --device: images per second, and on
a GPU the most memory torch held. With `--device cuda` the stages and the whole runs use the GPU
too (`wm … --device cuda`): the one command to run when a GPU machine is lent.

**Other files** (`--others`): the unmarked read of each held-out pydicom-data file, in process,
one thread (median of --repeats): how much an unmarked read costs depends on the image (a
frame whose public pilot looks strong by chance is tried at seven scales with the key).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from watermark_cli.allocation import spread_over_views
from watermark_cli.data.clinical import clinical_file, clinical_files
from watermark_cli.errors import BadInputError
from watermark_cli.guard import guard_image
from watermark_cli.io.image import read_image
from watermark_cli.keys import generated_key_text
from watermark_cli.marking.files import EmbedSettings, embed_file, restoration_record
from watermark_cli.marking.image import codec_for, extract_payload, residual_for
from watermark_cli.marking.marked_binding import binding_as_written
from watermark_cli.model.device import model_device
from watermark_cli.model.store import load_model, write_card
from watermark_cli.quality import QualityFloor, frame_meters

FLOOR = QualityFloor(40.0)
MESSAGE = b"benchmark-0001"


def timed(function, repeats: int) -> float:
    """Median milliseconds of `function` over `repeats` calls, after one warm-up call."""
    function()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e3


def stages(model, codec, source: Path, key: str, repeats: int, folder: Path) -> dict[str, float]:
    """Milliseconds per stage of one default embed of `source`, and of the two reads."""
    image = read_image(source)
    meters = frame_meters(image, FLOOR)
    bits = codec.encode(MESSAGE)
    residual = residual_for(model, image, bits, codec)

    def guard():
        spread = np.stack([spread_over_views(r, frame, meter, FLOOR.psnr_min)
                           for r, frame, meter in zip(residual, image.pixels, meters)])
        return guard_image(image.pixels, spread, FLOOR, meters, stored_min=image.stored_min,
                           stored_max=image.stored_max)

    marked = np.stack([frame.pixels for frame in guard()])
    marked_image = replace(image, pixels=marked)
    target = folder / "stage.dcm"

    def record():
        binding = binding_as_written(image, marked, target, "benchmark", "1.2.3.4", "none")
        return restoration_record(image, marked, key, binding=binding)

    figures = {
        "decode": timed(lambda: read_image(source), repeats),
        "views": timed(lambda: frame_meters(image, FLOOR), repeats),
        "encoder": timed(lambda: residual_for(model, image, bits, codec), repeats),
        "guard": timed(guard, repeats),
        "self_check": timed(lambda: extract_payload(model, codec, marked_image), repeats),
        "record": timed(record, repeats),
    }
    settings = EmbedSettings(MESSAGE, FLOOR, key=key, overwrite=True)
    whole = timed(lambda: embed_file(source, folder / "whole.dcm", settings, model, codec), repeats)
    # Writing, reading the file back, checking its record, binding and values, re-measuring it.
    figures["write_and_check"] = whole - sum(figures.values())
    figures["embed_file"] = whole
    figures["extract_marked"] = timed(lambda: extract_payload(model, codec, marked_image), repeats)
    figures["extract_unmarked"] = timed(lambda: extract_payload(model, codec, image), repeats)
    return figures


def networks_alone(model, batch: int, repeats: int) -> dict[str, float]:
    """Images per second of 512² frames, `batch` at a time, through the encoder and through the
    decoder's read, on the model's device; and on a GPU the most memory torch held (MiB)."""
    from watermark_cli.model.key_field import random_key_fields

    device = next(model.model.parameters()).device
    config = model.model.config
    generator = torch.Generator().manual_seed(0)
    frames = torch.rand(batch, 1, 512, 512, generator=generator).to(device)
    bits = torch.randint(0, 2, (batch, config.n_bits), generator=generator).float().to(device)
    field = random_key_fields(batch, 512, 512, config.key_field_sigma, frames) if config.keyed else None

    def through(network):
        def run():
            with torch.inference_mode():
                network()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return run

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    encoder = timed(through(lambda: model.model.encoder(frames, bits, field)), repeats)
    decoder = timed(through(lambda: model.model.decoder(frames, field)), repeats)
    figures = {"batch": batch, "encoder_images_per_s": round(batch / encoder * 1e3, 1),
               "decoder_images_per_s": round(batch / decoder * 1e3, 1)}
    if device.type == "cuda":
        figures["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return figures


def _run(*args) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "watermark_cli", *map(str, args)], capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"wm {args[0]} failed: {done.stderr.strip()}")
    return time.perf_counter() - started


def marginal(source: Path, count: int, folder: Path, runs: int = 3,
             device: str = "auto") -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Milliseconds one more copy of `source` adds to a whole wm run (see the module docstring),
    measured `runs` times in turn (whole runs on a shared machine vary by several ms a copy); and
    the images a second of each whole run of `count` copies."""
    key_file = folder / "site.key"
    key_file.write_text(generated_key_text() + "\n")
    few, many = folder / "one", folder / "many"
    for target, copies in ((few, 1), (many, count)):
        target.mkdir()
        for index in range(copies):
            shutil.copyfile(source, target / f"ct{index:03d}.dcm")
    figures: dict[str, list[float]] = {"embed": [], "extract_unmarked": [], "extract_marked": []}
    whole: dict[str, list[float]] = {name: [] for name in figures}  # images a second, the N copies' whole run
    for run in range(runs):
        marked_one, marked_many = folder / f"one_marked{run}", folder / f"many_marked{run}"
        keyed = ("--key-file", key_file, "--device", device)
        for name, one, many_ in (("embed", ("embed", few, "R-0042", *keyed, "-o", marked_one),
                                  ("embed", many, "R-0042", *keyed, "-o", marked_many)),
                                 ("extract_unmarked", ("extract", few, *keyed), ("extract", many, *keyed)),
                                 ("extract_marked", ("extract", marked_one, *keyed), ("extract", marked_many, *keyed))):
            seconds_one, seconds_many = _run(*one), _run(*many_)
            figures[name].append((seconds_many - seconds_one) / (count - 1) * 1e3)
            whole[name].append(count / seconds_many)
    return figures, whole


def other_files(model, codec, repeats: int) -> dict[str, tuple[str, int]]:
    """Median ms of an unmarked read of each held-out file, on one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        figures = {}
        for _, path in clinical_files("held_out"):
            image = read_image(path)
            size = "×".join(map(str, image.pixels.shape[1:])) + (f" ×{image.n_frames}" if image.n_frames > 1 else "")
            figures[path.name] = (size, round(timed(lambda: extract_payload(model, codec, image), repeats)))
        return figures
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--file", default="693_UNCR.dcm", help="pydicom-data file (default: a 512² CT)")
    parser.add_argument("--marginal", type=int, default=40, metavar="N",
                        help="copies for the whole-run figures (0: skip them)")
    parser.add_argument("--marginal-runs", type=int, default=3, metavar="R",
                        help="whole-run measurements of each figure, in turn; the median is reported")
    parser.add_argument("--write-card", action="store_true",
                        help="store the figures in the model's card.yaml (measure on an idle machine)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the networks run, in process and in the whole runs (default: auto)")
    parser.add_argument("--networks", type=int, default=0, metavar="B",
                        help="also time the networks alone, B 512² frames at a time")
    parser.add_argument("--others", action="store_true",
                        help="also time the unmarked read of every held-out file (one thread, in process)")
    args = parser.parse_args()

    try:
        device = model_device(args.device)
    except BadInputError as error:
        raise SystemExit(f"speed.py: {error}") from None
    model = load_model(args.model, device)
    key = generated_key_text()
    codec = codec_for(model, key)
    source = clinical_file(args.file)
    image = read_image(source)
    print(f"{args.file}: {image.pixels.shape[1]}×{image.pixels.shape[2]}, {image.n_frames} frame(s); "
          f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}; model {model.name}; "
          f"networks on {next(model.model.parameters()).device}")
    with tempfile.TemporaryDirectory() as folder:
        figures = {"stages_ms": {name: round(ms, 1) for name, ms in stages(model, codec, source, key, args.repeats,
                                                                             Path(folder)).items()}}
        print("| stage (one embed, in process) | median ms |\n|---|---:|")
        for name, ms in figures["stages_ms"].items():
            print(f"| {name} | {ms:.1f} |")
        if args.marginal > 1:
            with tempfile.TemporaryDirectory() as runs:
                measured, rates = marginal(source, args.marginal, Path(runs), args.marginal_runs, args.device)
            figures["marginal_ms"] = {name: round(statistics.median(values)) for name, values in measured.items()}
            figures["marginal_runs_ms"] = {name: [round(v) for v in values] for name, values in measured.items()}
            figures["whole_run_images_per_s"] = {name: round(statistics.median(values), 1)
                                                 for name, values in rates.items()}
            print(f"| whole run, one more copy (N = {args.marginal}; median of {args.marginal_runs} runs) "
                  "| ms (goal ≤ 100) | each run | images/s of the whole run (start-up included) |\n"
                  "|---|---:|---|---:|")
            for name, ms in figures["marginal_ms"].items():
                each = ", ".join(str(v) for v in figures["marginal_runs_ms"][name])
                print(f"| wm {name.replace('_', ' ')} | {ms} | {each} | {figures['whole_run_images_per_s'][name]} |")
    if args.networks > 0:
        figures["networks_alone"] = networks_alone(model, args.networks, args.repeats)
        print("| networks alone, 512² frames | value |\n|---|---:|")
        for name, value in figures["networks_alone"].items():
            print(f"| {name.replace('_', ' ')} | {value} |")
    if args.others:
        figures["unmarked_reads_ms"] = other_files(model, codec, args.repeats)
        print("| held-out file, unmarked (one thread, in process) | size | median ms |\n|---|---|---:|")
        for name, (size, ms) in figures["unmarked_reads_ms"].items():
            print(f"| {name} | {size} | {ms} |")
    if args.write_card:
        card = dict(model.card)
        card.setdefault("figures", {})["speed"] = {
            "command": "python benchmarks/speed.py --write-card",
            "image": f"{args.file} ({image.pixels.shape[1]}×{image.pixels.shape[2]})",
            "cpu": f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
            "repeats": args.repeats,
            "measured_in": "default wm embed: the view floor, record, self-check; whole runs with a generated key",
            **figures,
        }
        write_card(model.path, card)


if __name__ == "__main__":
    main()
