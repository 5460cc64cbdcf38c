"""Payload coding: frame recovery against raw bit errors, format 1 (Reed-Solomon) vs format 2
(polar codes per length class, soft decisions), beside the finite-length limit; and the gain on
real attacks of held-out images, both codecs on the same decoder outputs.

    .venv/bin/python benchmarks/payload_coding.py [--trials 300] [--plot docs/images/payload_coding.png]
        [--attacks] [--false-positives 300000] [--workers 2]

1. Channels. Hard: a binary symmetric channel, each raw bit flipped with probability p (what a
   decoder that only says 0 or 1 gives). Soft: the binary-input AWGN channel with the noise that
   gives the same raw bit error rate p, its log-likelihood ratios handed to the decoder as bit
   probabilities (what the network's confidences are like). For 4, 8, 12 and 16-byte messages,
   `--trials` random messages per point.
2. The limit: for each message length, the raw error rate at which a code of n = 256 bits
   carrying the message plus a 32-bit tag could still be decoded with 1 % frame errors, by the
   normal approximation to the finite-length bound (Polyanskiy, Poor and Verdú 2010):
   k ≈ n C − sqrt(n V) Q⁻¹(ε) + ½ log₂ n, with C and V the capacity and dispersion of the channel.
3. `--attacks`: on the held-out slices and files (benchmarks/heldout.py), marked by default
   `wm embed`, each attack in the view each frame was budgeted in. Both codecs decode the same
   decoder outputs: each raw bit's probability of being right, as measured for the format-2 mark,
   is given to the format-1 codeword bit in the same position.
4. `--false-positives N`: N decodes of random soft and hard raw bits; any payload found is a
   false positive (the bound is 2.9e-11 per decode).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy.special import ndtri

from watermark_cli.payload import LegacyPayloadCodec, PayloadCodec

N_BITS = 256
LENGTHS = (4, 8, 12, 16)
HARD_RATES = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.10, 0.12, 0.14, 0.16)
SOFT_RATES = (0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.14, 0.16, 0.18, 0.20, 0.22)
LIMIT_TAG_BITS = 32
KEY = "benchmark-key"


# -------------------------------------------------------------------------------- channels ----

def hard_channel(bits: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    return (bits ^ (rng.random(bits.size) < rate)).astype(np.float64)


def awgn_sigma(rate: float) -> float:
    """The noise σ of BPSK (±1) whose hard decisions err with probability `rate`: Q(1/σ) = rate."""
    return 1.0 / float(-ndtri(rate))


def soft_channel(bits: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """P(bit = 1) after BPSK over AWGN: LLR = 2y/σ² for y = ±1 + noise."""
    sigma = awgn_sigma(rate)
    received = (2.0 * bits - 1.0) + rng.normal(0.0, sigma, bits.size)
    return 1.0 / (1.0 + np.exp(-2.0 * received / sigma**2))


def bsc_capacity_dispersion(p: float) -> tuple[float, float]:
    h = -p * math.log2(p) - (1 - p) * math.log2(1 - p)
    return 1.0 - h, p * (1 - p) * math.log2((1 - p) / p) ** 2


def biawgn_capacity_dispersion(p: float, samples: int = 400_000) -> tuple[float, float]:
    """Monte Carlo over the channel's information density, i(y) = 1 − log₂(1 + e^(−L)), L the LLR
    of the sent bit."""
    sigma = awgn_sigma(p)
    rng = np.random.default_rng(0)
    llr = 2.0 * (1.0 + rng.normal(0.0, sigma, samples)) / sigma**2
    density = 1.0 - np.logaddexp(0.0, -llr) / math.log(2.0)
    return float(density.mean()), float(density.var())


def limit_rate(length: int, soft: bool, n: int = N_BITS, frame_error: float = 0.01) -> float:
    """The highest raw error rate at which (length bytes + a 32-bit tag) still fit n bits at the
    given frame error rate, by the normal approximation (bisection on p)."""
    k = 8 * length + LIMIT_TAG_BITS
    low, high = 1e-4, 0.3
    for _ in range(40):
        p = math.sqrt(low * high)
        capacity, dispersion = (biawgn_capacity_dispersion(p, 100_000) if soft else bsc_capacity_dispersion(p))
        allowed = n * capacity - math.sqrt(n * dispersion) * float(-ndtri(frame_error)) + 0.5 * math.log2(n)
        low, high = (p, high) if allowed >= k else (low, p)
    return low


# ------------------------------------------------------------------------ recovery curves ----

def recovery(codec, length: int, rate: float, soft: bool, trials: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    recovered = 0
    for _ in range(trials):
        message = bytes(rng.integers(0, 256, length, dtype=np.uint8))
        bits = codec.encode(message)
        received = soft_channel(bits, rate, rng) if soft else hard_channel(bits, rate, rng)
        result = codec.decode(received)
        recovered += bool(result.found and result.message == message)
    return recovered / trials


def _curve_job(job) -> tuple:
    codec_name, length, rate, soft, trials = job
    codec = PayloadCodec(N_BITS, key=KEY) if codec_name == "format 2" else LegacyPayloadCodec(N_BITS, key=KEY, parity_bytes=10)
    seed = 100_000 * soft + 1000 * length + round(rate * 1000)  # both codecs: the same messages and noise
    return job, recovery(codec, length, rate, soft, trials, seed)


def curves(trials: int, workers: int) -> dict:
    jobs = [(name, length, rate, soft, trials) for soft, rates in ((False, HARD_RATES), (True, SOFT_RATES))
            for rate in rates for length in LENGTHS for name in ("format 1", "format 2")]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = dict(pool.map(_curve_job, jobs))
    table: dict = {}
    for (name, length, rate, soft, _), value in results.items():
        table.setdefault("soft" if soft else "hard", {}).setdefault(name, {}).setdefault(length, {})[rate] = value
    return table


def print_curves(table: dict, trials: int) -> None:
    for channel, rates in (("hard", HARD_RATES), ("soft", SOFT_RATES)):
        print(f"\n== {channel} decisions: exact frame recovery, {trials} trials per point "
              f"({'binary symmetric channel' if channel == 'hard' else 'BI-AWGN with the same raw error rate'})")
        print(f"{'raw BER':>8}" + "".join(f"{f'{name[-1]}:{length}B':>9}" for length in LENGTHS
                                        for name in ("format 1", "format 2")))
        for rate in rates:
            print(f"{rate:>8.0%}" + "".join(f"{table[channel][name][length][rate]:>9.1%}" for length in LENGTHS
                                             for name in ("format 1", "format 2")))
        limits = ", ".join(f"{length} B: {limit_rate(length, channel == 'soft'):.1%}" for length in LENGTHS)
        print(f"finite-length limit (message + 32-bit tag in 256 bits, 1 % frame errors): {limits}")


def plot(table: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axis, channel, rates in ((axes[0], "hard", HARD_RATES), (axes[1], "soft", SOFT_RATES)):
        for index, length in enumerate(LENGTHS):
            colour = f"C{index}"
            for name, style in (("format 1", ":"), ("format 2", "-")):
                axis.plot([100 * r for r in rates], [100 * table[channel][name][length][r] for r in rates], style,
                          color=colour, marker="o", markersize=3,
                          label=f"{length} bytes, {name}" if channel == "hard" else None)
            axis.axvline(100 * limit_rate(length, channel == "soft"), color=colour, alpha=0.35, linewidth=3)
        axis.set_title(f"{channel} decisions" + (" (BSC)" if channel == "hard" else " (BI-AWGN, same raw BER)"),
                       fontsize=10)
        axis.set_xlabel("raw bit error rate (%)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("exact payload recovery (%)")
    axes[0].legend(fontsize=7, loc="lower left")
    figure.suptitle("Payload coding on 256 raw bits; shaded lines: finite-length limit (message + 32-bit tag, "
                    "1 % frame errors)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=90)


# ------------------------------------------------------------------------- real attacks ----

def attack_gain(messages: int) -> None:
    """Format 1 vs format 2 on the same decoder outputs, on the held-out sets."""
    import heldout
    from watermark_cli.attacks.codecs import FrameContext, parse_attack_list
    from watermark_cli.evaluation.run import evaluation_messages, upper_bound_95
    from watermark_cli.model.store import load_model
    from watermark_cli.quality import QualityFloor
    from watermark_cli.marking.image import embed_pixels, read_frames

    model = load_model(None)
    new = PayloadCodec(model.n_bits)
    old = LegacyPayloadCodec(model.n_bits, parity_bytes=10)
    attacks = parse_attack_list("identity,jpeg:80,jpeg:70,jpeg:50,noise:0.02,resize:0.75,resize:0.5,crop:0.5")
    for set_name in ("files", "slices"):
        for length in (8, 16):
            counts = {attack.label: [0, 0, 0] for attack in attacks}  # old, new, trials
            for label, load in heldout.sources(set_name):
                image = load()
                for index, message in enumerate(evaluation_messages(messages, length, 0)):
                    outcome = embed_pixels(model, new, image, message, QualityFloor(40.0))
                    bits = new.encode(message)
                    views = [meter.view_named(frame.quality.binding_view)
                             for meter, frame in zip(outcome.meters, outcome.frames)]
                    for attack in attacks:
                        attacked = np.stack([attack(frame, FrameContext(image.stored_min, image.stored_max, view,
                                                                        seed=index))
                                             for frame, view in zip(outcome.pixels.astype(np.float64), views)])
                        reading = read_frames(model, new, attacked)
                        # How sure the decoder was of the right value of each raw bit:
                        right = np.where(bits == 1, reading.probabilities, 1.0 - reading.probabilities)
                        old_bits = old.encode(message)
                        decoded_old = old.decode(np.where(old_bits == 1, right, 1.0 - right))
                        tally = counts[attack.label]
                        tally[0] += bool(decoded_old.found and decoded_old.message == message)
                        tally[1] += bool(reading.decoded.found and reading.decoded.message == message)
                        tally[2] += 1
            print(f"\n== {set_name}, {length}-byte messages, {messages} per image: exact recovery, same decoder outputs")
            print(f"{'attack':<14}{'format 1':>10}{'format 2':>10}{'n':>6}{'format 2, 95 % lower':>22}")
            for name, (old_ok, new_ok, trials) in counts.items():
                lower = 1.0 - upper_bound_95(trials - new_ok, trials)
                print(f"{name:<14}{old_ok / trials:>10.1%}{new_ok / trials:>10.1%}{trials:>6}{lower:>22.1%}")


# ---------------------------------------------------------------------- false positives ----

def _false_positive_job(job) -> int:
    seed, count = job
    rng = np.random.default_rng(seed)
    codec = PayloadCodec(N_BITS)
    found = 0
    for index in range(count):
        probabilities = rng.random(N_BITS) if index % 2 else rng.integers(0, 2, N_BITS).astype(np.float64)
        found += codec.decode(probabilities).found
    return found


def false_positives(total: int, workers: int) -> None:
    chunk = 5000
    jobs = [(seed, min(chunk, total - seed * chunk)) for seed in range(math.ceil(total / chunk))]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        found = sum(pool.map(_false_positive_job, jobs))
    bound = PayloadCodec(N_BITS).false_positive_bound
    print(f"\n== false positives: {found} payloads found in {total} decodes of random raw bits (half soft, half "
          f"hard), {time.perf_counter() - started:.0f} s; bound {bound:.2g} per decode; with 0 found the rate is "
          f"below {1 - 0.05 ** (1 / total):.2g} (one-sided 95 %)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=300, help="messages per point of the curves (0: skip them)")
    parser.add_argument("--plot", default=None, help="write the curves as a PNG here")
    parser.add_argument("--attacks", action="store_true", help="also the gain on real attacks of held-out images")
    parser.add_argument("--messages", type=int, default=5, help="messages per image for --attacks")
    parser.add_argument("--false-positives", type=int, default=0, help="decodes of random raw bits")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.trials:
        started = time.perf_counter()
        table = curves(args.trials, args.workers)
        print_curves(table, args.trials)
        print(f"(curves: {time.perf_counter() - started:.0f} s)")
        if args.plot:
            plot(table, args.plot)
            print(f"wrote {args.plot}")
    if args.attacks:
        attack_gain(args.messages)
    if args.false_positives:
        false_positives(args.false_positives, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
