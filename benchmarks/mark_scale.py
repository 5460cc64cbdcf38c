"""At what scale would an additive mark have to sit for key-less denoising to cost more than the
mark itself, and could a mark at that scale still carry the payload? (issue 28, design §7)

    .venv/bin/python benchmarks/mark_scale.py [--crop SIDE] [--seed 0] [--scales 1,2,4,8]
        [--calibrate] [--quick] [--json]

A design study for the next encoder, on the images where the shipped mark is erased cheaply:
the removal images of `benchmarks/attacks_keyless.py` with the same `--crop` and `--seed` (its
`image_pool` and `plan`). No product code is changed or needed beyond reading those images and
measuring PSNR in each frame's binding view (`quality.FrameMeter`).

**The marks.** Not the shipped model's: a synthetic spread-spectrum mark per image and scale s.
256 raw bits (the shipped payload's codeword), bit b with sign ±1 modulating carrier c_b, white
noise smoothed by a Gaussian of s px (unit RMS); the sum, scaled so that the marked frame sits
at 40 dB in its binding view (unrounded values). A mark of scale s has its energy at
wavelengths of about 2πs px, and a frame of A pixels holds about A / (4πs²) independent values
of it.

**Removal.** The attacker's family, wider than `attacks_keyless.py`'s: marked − γ·(marked −
denoised) for median 3×3 and 5×5, Gaussian σ 0.5 to 8 px, total variation at 0.003 to 0.2 of
the binding view's span, wavelet (BayesShrink), γ from 1 to 10 (`GAMMAS`). Two measures of
what is left of the mark after an attack:

- kept share r = ⟨y − A(h), m⟩ / |m|² (y the attacked marked frame, A(h) the same attack on the
  unmarked host, m the mark): 1 untouched, 0 gone, negative inverted. "Erased" at r ≤ 0.3 and
  at r ≤ 0.5; `--calibrate` shows how r relates to the shipped model's own reads (its mark,
  made as `wm embed` makes it, through the same attacks, read by the key holder: the share of
  reads per band of r).
- the raw bit error rate of an idealised linear reader that knows every carrier (z_b = ⟨W y,
  W c_b⟩, W y = y − Gaussian(y, 1.5 s): the host's coarser content taken out); it "reads" an
  8-byte message at raw BER ≤ 14 % (format 2, soft decisions, ≥ 98 % of messages:
  docs/payload_coding.md). No blind reader does better than one that knows the carriers and
  where they sit, but the shipped network reads with a learned, nonlinear host estimate, which
  a linear filter is not: where this reader fails, a network may not.

Per image and scale it prints the reader's BER on the marked frame, and the cheapest removal
(the one leaving the frame closest to the original) that erases the mark by each measure, as
the PSNR drop below the marked copy: the 4 dB rule asks for a drop of at least 4 dB.

Time on the 2-core development machine (stop 61): whole images 1,676 s (half of it beside the
next), `--crop 128 --seed 1 --calibrate` 769 s; `--quick --crop 128 --calibrate` 20 s for two
scales. Memory: the carriers and the reader's filters take 2 GB a megapixel of the largest
frame (float32; 6.4 GB for the held-out CR file's 1760² frame).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from scipy.ndimage import gaussian_filter, median_filter

import attacks_keyless as keyless

RAW_BITS = 256
FLOOR_DB = 40.0
READS_BELOW_BER = 0.14
KEPT_SHARES = (0.3, 0.5)
RULE_DB = keyless.RULE_DB
WHITENING = 1.5  # the reader subtracts the frame smoothed at this many times the mark's scale
GAMMAS = (1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3, 1.4, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0)
QUICK_GAMMAS = (1.0, 1.3, 2.0, 4.0)
GAUSSIAN_SIGMAS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
TV_WEIGHTS = (0.003, 0.006, 0.01, 0.014, 0.02, 0.03, 0.05, 0.1, 0.2)
CALIBRATION_BANDS = (-np.inf, 0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, np.inf)


def denoisings(frame: np.ndarray, span: float, quick: bool = False) -> list[tuple[str, np.ndarray]]:
    """(name, denoised frame) for the attacker's denoisers; `span`: the binding view's span in
    the frame's units (total variation's weight and the wavelet's range are set in it)."""
    sigmas, weights = ((1.0, 4.0), (0.01, 0.05)) if quick else (GAUSSIAN_SIGMAS, TV_WEIGHTS)
    found = [("median 3×3", keyless.median3(frame))]
    if not quick:
        found.append(("median 5×5", median_filter(frame, size=5, mode="reflect")))
    found += [(f"gauss σ{sigma:g}", keyless.gaussian(frame, sigma)) for sigma in sigmas]
    found += [(f"TV {weight:g}", keyless.total_variation(frame, span, weight)) for weight in weights]
    if not quick:
        found.append(("wavelet", keyless.wavelet(frame, span)))
    return found


def removals(frame: np.ndarray, denoised: list[tuple[str, np.ndarray]], quick: bool = False):
    """(name, attacked frame) for every denoising of `frame` (`denoisings`) and γ:
    frame − γ·(frame − denoised), one at a time (a frame's 320 would take 8 GB on a 3-megapixel CR)."""
    for name, version in denoised:
        for gamma in QUICK_GAMMAS if quick else GAMMAS:
            yield f"{name} γ{gamma:g}", frame - gamma * (frame - version)


def removals_beside_host(marked: np.ndarray, host: np.ndarray, host_denoised, span: float, quick: bool):
    """(name, attacked marked frame, the same removal on the unmarked host) for every removal; the
    host's denoisings (`denoisings` of `host`) are made once per image by the caller."""
    for (name, attacked), (_, attacked_host) in zip(removals(marked, denoisings(marked, span, quick), quick),
                                                    removals(host, host_denoised, quick)):
        yield name, attacked, attacked_host


def spread_mark(shape: tuple[int, int], scale: float, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(carriers (RAW_BITS, rows, cols) float32 of unit RMS, signs ±1, their signed sum of unit RMS)."""
    carriers = np.stack([gaussian_filter(rng.standard_normal(shape), scale, mode="wrap")
                         for _ in range(RAW_BITS)]).astype(np.float32)
    carriers /= carriers.std(axis=(1, 2), keepdims=True)
    signs = (rng.integers(0, 2, RAW_BITS) * 2 - 1).astype(np.float32)
    pattern = np.tensordot(signs, carriers, axes=1).astype(np.float64)
    return carriers, signs, pattern / pattern.std()


def at_floor(meter, host: np.ndarray, pattern: np.ndarray, span: float) -> np.ndarray:
    """`pattern` scaled so that host + mark sits at FLOOR_DB in the meter's binding view."""
    low, high = 1e-5 * span, 0.3 * span
    for _ in range(50):  # bisection on a log scale: PSNR falls as the gain grows
        gain = (low * high) ** 0.5
        low, high = (gain, high) if meter.binding_psnr(host + gain * pattern) > FLOOR_DB else (low, gain)
    return low * pattern


def whitened(frame: np.ndarray, scale: float) -> np.ndarray:
    return frame - gaussian_filter(frame, WHITENING * scale, mode="reflect")


class LinearReader:
    """The idealised reader: matched filters of the whitened carriers on the whitened frame."""

    def __init__(self, carriers: np.ndarray, signs: np.ndarray, scale: float) -> None:
        self.scale, self.signs = scale, signs
        self.filters = np.empty((len(carriers), carriers[0].size), dtype=np.float32)  # 1 GB a megapixel
        for row, carrier in zip(self.filters, carriers):
            row[:] = whitened(carrier, scale).ravel()

    def bit_error_rate(self, frame: np.ndarray) -> float:
        responses = self.filters @ whitened(frame, self.scale).astype(np.float32).ravel()
        return float(np.mean(np.sign(responses) != self.signs))


def kept_share(attacked: np.ndarray, attacked_host: np.ndarray, mark: np.ndarray) -> float:
    return float(np.sum((attacked - attacked_host) * mark) / np.sum(mark * mark))


def measure_scale(item, host_denoised, span: float, scale: float, rng, quick: bool) -> dict:
    """One image, one scale: the reader's BER on the marked frame, and per erasure measure the
    cheapest erasing removal (its name and the PSNR drop below the marked copy)."""
    host = item.image.pixels[0].astype(np.float64)
    carriers, signs, pattern = spread_mark(host.shape, scale, rng)
    mark = at_floor(item.meter, host, pattern, span)
    marked = host + mark
    marked_psnr = item.meter.binding_psnr(marked)
    reader = LinearReader(carriers, signs, scale)
    del carriers
    clean_ber = reader.bit_error_rate(marked)
    cheapest: dict[str, tuple[float, str] | None] = {f"kept ≤ {share:g}": None for share in KEPT_SHARES}
    cheapest["reader fails"] = None
    count = 0
    for name, attacked, attacked_host in removals_beside_host(marked, host, host_denoised, span, quick):
        count += 1
        drop = marked_psnr - item.meter.binding_psnr(attacked)
        share = kept_share(attacked, attacked_host, mark)
        erased = {f"kept ≤ {s:g}": share <= s for s in KEPT_SHARES}
        erased["reader fails"] = clean_ber <= READS_BELOW_BER and reader.bit_error_rate(attacked) > READS_BELOW_BER
        for measure, yes in erased.items():
            if yes and (cheapest[measure] is None or drop < cheapest[measure][0]):
                cheapest[measure] = (drop, name)
    return {"scale": scale, "removals": count, "psnr_marked": marked_psnr, "independent_values": host.size / (4 * np.pi * scale**2),
            "clean_ber": clean_ber,
            "cheapest_erasing": {m: None if c is None else {"drop_db": c[0], "removal": c[1]}
                                 for m, c in cheapest.items()}}


def calibration(model, mark_, host_denoised, quick: bool) -> list[tuple[float, bool]]:
    """(kept share, read by the key holder) for the shipped model's own mark (`keyless.mark`)
    through every removal."""
    item = mark_.item
    host = item.image.pixels[0].astype(np.float64)
    marked = mark_.pixels.astype(np.float64)
    return [(kept_share(attacked, attacked_host, marked - host),
             keyless.holder_reads(model, mark_, keyless.stored(item.image, attacked)))
            for _, attacked, attacked_host in removals_beside_host(marked, host, host_denoised,
                                                                   mark_.view.stored_span, quick)]


def print_tables(result: dict) -> None:
    scales = result["scales"]
    print(f"mark_scale: {len(result['images'])} removal images ({result['which']}), a synthetic {RAW_BITS}-bit "
          f"spread mark at {FLOOR_DB:g} dB per scale; {result['removals']} removals each; {result['seconds']:.0f} s")
    print("\nPSNR drop below the marked copy of the cheapest removal that erases the mark (rule: ≥ 4 dB; "
          "'never': none did), and the idealised reader's raw BER on the marked frame (reads ≤ 14 %)")
    header = "| image | " + " | ".join(f"s = {s:g} px: BER; r ≤ 0.3; r ≤ 0.5; reader" for s in scales) + " |"
    print(header + "\n|---|" + "---|" * len(scales))
    for image in result["images"]:
        cells = []
        for figures in image["scales"]:
            drops = ["never" if c is None else f"{c['drop_db']:.1f}" for c in figures["cheapest_erasing"].values()]
            if figures["clean_ber"] > READS_BELOW_BER:
                drops[-1] = "–"
            cells.append(f"{100 * figures['clean_ber']:.0f} %; " + "; ".join(drops))
        print(f"| {image['label']} | " + " | ".join(cells) + " |")
    for s_index, scale in enumerate(scales):
        for measure in result["images"][0]["scales"][s_index]["cheapest_erasing"]:
            cheap = [image["label"] for image in result["images"]
                     if (c := image["scales"][s_index]["cheapest_erasing"][measure]) is not None and c["drop_db"] < RULE_DB]
            readable = sum(image["scales"][s_index]["clean_ber"] <= READS_BELOW_BER for image in result["images"])
            counted = readable if measure == "reader fails" else len(result["images"])
            print(f"s = {scale:g} px, erased ({measure}) within {RULE_DB:g} dB: {len(cheap)} of {counted}"
                  + (f" (the reader read {readable} of {len(result['images'])})" if measure == "reader fails" else ""))
    if result.get("calibration"):
        print("\nThe shipped model's own marks through the same removals: reads by the key holder per band of kept share r")
        print("| r | read | not read |\n|---|---:|---:|")
        for band in result["calibration"]:
            print(f"| {band['band']} | {band['read']} | {band['not_read']} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crop", type=int, default=None, metavar="SIDE",
                        help="one textured SIDE² cut of each held-out image, as attacks_keyless.py --crop")
    parser.add_argument("--seed", type=int, default=0, help="which images and cuts, as attacks_keyless.py --seed")
    parser.add_argument("--scales", default="1,2,4,8", help="the marks' scales s, px (comma-separated)")
    parser.add_argument("--calibrate", action="store_true",
                        help="also put the shipped model's own marks through the removals (kept share against reads)")
    parser.add_argument("--quick", action="store_true", help="2 images, 6 denoisers × 4 γ (a smoke test)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the tables")
    args = parser.parse_args()
    started = time.perf_counter()
    log = (lambda text: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    scales = [float(s) for s in args.scales.split(",")]
    model = keyless.load_model(None)
    items = keyless.image_pool(args.crop, args.seed)
    marks = [keyless.mark(model, item) for item in items] if args.crop else []
    if args.crop:  # as attacks_keyless.py: only cuts whose shipped mark reads back are victims
        marks = [m for m in marks if keyless.holder_reads(model, m, keyless.stored(m.item.image, m.pixels))]
        items = [m.item for m in marks]
    chosen = keyless.plan(items, 26, False, np.random.default_rng(args.seed))["removal"]
    if args.quick:
        chosen = chosen[:2]
    rng = np.random.default_rng([args.seed, 61])
    images, calibrated = [], []
    for index in chosen:
        item = items[index]
        mark_ = marks[index] if marks else keyless.mark(model, item)
        span = mark_.view.stored_span  # the binding view's span, as wm embed finds it
        host_denoised = denoisings(item.image.pixels[0].astype(np.float64), span, args.quick)  # once per image
        images.append({"label": item.label, "shape": list(item.image.pixels.shape[1:]),
                       "scales": [measure_scale(item, host_denoised, span, s, rng, args.quick) for s in scales]})
        if args.calibrate:
            calibrated += calibration(model, mark_, host_denoised, args.quick)
        log(f"  {item.label}")
    bands = [{"band": f"[{low:g}, {high:g})",
              "read": sum(low <= r < high and read for r, read in calibrated),
              "not_read": sum(low <= r < high and not read for r, read in calibrated)}
             for low, high in zip(CALIBRATION_BANDS, CALIBRATION_BANDS[1:])]
    result = {"which": f"--crop {args.crop} --seed {args.seed}" if args.crop else f"whole images, --seed {args.seed}",
              "scales": scales, "removals": images[0]["scales"][0]["removals"] if images else 0,
              "images": images, "calibration": bands if args.calibrate else None,
              "seconds": time.perf_counter() - started}
    if args.json:
        print(json.dumps(result))
    else:
        print_tables(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
