"""wm beside a classical open-source peer, invisible-watermark, on the held-out images.

    .venv/bin/python benchmarks/peers.py [--set files,slices] [--messages 3] [--message-bytes 8]
        [--attacks LIST] [--json] [--peer-as-published]

The peer is `invisible-watermark` (PyPI; `pip install -e '.[peers]'`), the DWT + block-QIM marker
of Stable Diffusion's reference scripts, in its two classical methods: `dwtDct` (QIM on the
largest non-DC value of each 4×4 block of the Haar LL band; despite the name, no DCT is taken)
and `dwtDctSvd` (QIM on the largest singular value of each block's DCT). Both sides get the same held-out images (benchmarks/heldout.py), the
same messages (`evaluation.evaluation_messages`, seed 0), the same quality floor (every written
frame ≥ 40 dB PSNR in its binding view, measured on the stored values a file would hold) and the
same attacks, each acting in that view with the same seeds. One table per image set.

How the peer is configured, to be fair to it on gray medical images:
- Luminance only. Its default scales ([0, 36, 36] and [0, 36, 0]) mark the chroma channels U and
  V of a colour image; a gray image has no chroma to keep, so both encoder and decoder get
  scales [s, 0, 0] (Y only).
- Sub-bands in order. Its encoders hand the detail sub-bands back to `pywt.idwt2` as (V, H, D)
  where `pywt.dwt2` gave (H, V, D): that swap alone changes the image by far more than the mark
  (on a 256² slice: 22 dB whatever the step), so it could never meet 40 dB. The classes below
  override `encode` to hand them back in order, and change nothing else (`--peer-as-published`
  measures the encoders as published).
- What the reader sees, at full precision. It is fed the frame's binding-view display × 255
  (the view whose PSNR binds a trial mark: a window of a CT, stored/255 for an 8-bit slice) as
  a float32 3-channel gray BGR image; its marked luminance (the mean of its three output
  channels) minus that input is turned back into stored units (× the view's stored span / 255)
  and rounded and clipped to the stored range (`guard.quantise`), exactly as a file would hold it.
- Strength. Its only knob is the QIM step s. For every written frame the step is bisected
  (geometrically, 9 steps after trying both ends of [1, 200]) for the largest s whose written
  frame meets the floor in every binding view: as generous as wm's own per-frame budget fill.
  A frame that misses the floor even at s = 1 is written unmarked and counts as a failure under
  every attack. The decoder is told that frame's step: a per-image key the peer would really
  have to guess or fix in advance (generous again).
- Payload. The message bytes as raw bits (8 bytes = 64 bits), no error correction (the peer has
  none): exact recovery means every bit right. Its public `WatermarkDecoder` refuses images
  under 256×256 pixels, which would rule out every crop of a 256² slice before it is tried, so
  the embedder's own `decode` is called directly.
- Reading after an attack. Exports (`window8`, `jpeg`, or a combination with such a step) arrive
  as 8-bit display values already; everything else arrives in stored units and goes through the
  view's display × 255. The peer has no synchronisation: after a crop, resize or rotation its
  block grid no longer lines up, and nothing here tries to line it up again.
- Clipped views. A CT binds in its brain window (80 HU wide), where air and bone are clipped to
  black and white: the peer marks those blocks too, but they read back clipped, so they vote
  the same whatever they carry (a black block: 0). Marking and reading in the data range instead reads identity back
  but loses every window export (the mark is then on a scale the export does not keep).

Time per image is the embed (wm: `embed_pixels` with its budget fill; the peer: the whole step
search, 12 encodes), in seconds. The peer's block loops are Python: about 0.01 s (dwtDct) and
0.03 s (dwtDctSvd) per encode of a 256² slice, growing with the pixel count (the 1760²
radiograph of `files` holds 47× as many blocks: about 9 s and 19 s per search on 2 cores).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

import heldout
import watermark_cli.evaluation.run as evaluation
from watermark_cli.attacks.codecs import Attack, FrameContext, jpeg, parse_attack_list, window_8bit
from watermark_cli.evaluation.run import EvaluationOptions, evaluate_images, evaluation_messages
from watermark_cli.guard import quantise
from watermark_cli.io.medical_image import MedicalImage
from watermark_cli.jsonout import dumps
from watermark_cli.model.store import load_model
from watermark_cli.quality import FrameMeter, QualityFloor, frame_meters, meets_floor
from watermark_cli.views import View

try:
    import cv2
    import pywt
    from imwatermark.dwtDctSvd import EmbedDwtDctSvd
    from imwatermark.maxDct import EmbedMaxDct
except ImportError as missing:
    raise SystemExit(f"the peer is not installed ({missing}): pip install -e '.[peers]'") from None

FLOOR_DB = 40.0
ATTACKS = "identity,window8,jpeg:90,jpeg:80,jpeg:50,noise:0.01,resize:0.75,crop:0.7,rotate:2"
STEP_RANGE = (1.0, 200.0)  # the peer's QIM step, in display × 255 units (its default is 36)
BISECTION_STEPS = 9  # after both ends: the step is then known to within 200^(1/512), about 1 %
TRIAL_STEP = 8.0  # the step of the trial mark that finds the binding view
EXPORTS = (window_8bit, jpeg)  # attacks whose output is an 8-bit export through the view


# ------------------------------------------------------------------------------ the peer ----

class InOrderSubBands:
    """The peer's `encode` with one change: the detail sub-bands go back to the inverse DWT in
    the order the forward DWT gave them. Everything else (colour conversion, the 4-aligned
    region, the per-block QIM of `encode_frame`) is the peer's own."""

    _scales: list[float]

    def encode(self, bgr: np.ndarray) -> np.ndarray:
        yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
        rows, cols = bgr.shape[0] // 4 * 4, bgr.shape[1] // 4 * 4
        # The peer's decoder reads Y and U only, so a scale for V would mark nothing it reads.
        for channel, scale in enumerate(self._scales[:2]):
            if scale <= 0:
                continue
            approximation, details = pywt.dwt2(yuv[:rows, :cols, channel], "haar")
            self.encode_frame(approximation, scale)  # the QIM, in place on the LL band's blocks
            yuv[:rows, :cols, channel] = pywt.idwt2((approximation, details), "haar")
        return cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)


class DwtDct(InOrderSubBands, EmbedMaxDct):
    pass


class DwtDctSvd(InOrderSubBands, EmbedDwtDctSvd):
    pass


FIXED = {"dwtDct": DwtDct, "dwtDctSvd": DwtDctSvd}
AS_PUBLISHED = {"dwtDct": EmbedMaxDct, "dwtDctSvd": EmbedDwtDctSvd}


def gray_bgr(display255: np.ndarray) -> np.ndarray:
    """A gray frame as the float32 3-channel BGR image the peer takes (float: no 8-bit rounding
    before the mark; the only rounding is the stored values')."""
    return np.repeat(np.asarray(display255, dtype=np.float32)[:, :, None], 3, axis=2)


def peer_write(method: type, bits: np.ndarray, step: float, frame: np.ndarray, view: View,
               image: MedicalImage) -> np.ndarray:
    """The stored values of `frame` marked by the peer at QIM step `step` in `view`."""
    shown = view.display(frame) * 255.0
    embedder = method(watermarks=[int(b) for b in bits], wmLen=len(bits), scales=[step, 0, 0])
    luminance = embedder.encode(gray_bgr(shown)).astype(np.float64).mean(axis=2)
    # Display × 255 back to stored units: linear for the views here (a window inside its range,
    # the data range, stored/255), then rounded before the store, as a file holds it.
    change = (luminance - shown) * view.stored_span / 255.0
    return quantise(frame, change, 1.0, image.stored_min, image.stored_max)


def peer_read(method: type, n_bits: int, step: float, display255: np.ndarray) -> np.ndarray:
    """The bits the peer's decoder reads (its embedder's `decode`, which has no size limit)."""
    embedder = method(watermarks=[], wmLen=n_bits, scales=[step, 0, 0])
    with warnings.catch_warnings():
        # A frame cropped so small that some bit has no block left averages an empty list (NaN),
        # which reads as 0: a wrong bit, which is what it is.
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(embedder.decode(gray_bgr(display255)), dtype=bool)


def marking_view(method: type, bits: np.ndarray, frame: np.ndarray, meter: FrameMeter,
                 image: MedicalImage) -> View:
    """The view the peer marks and reads in: the one that binds a trial mark made in the
    narrowest binding view (a CT's brain window, the 8-bit slices' only view)."""
    narrowest = min(meter.binding, key=lambda view: view.stored_span)
    trial = peer_write(method, bits, TRIAL_STEP, frame, narrowest, image)
    return meter.view_named(meter.measure(trial).binding_view)


@dataclass
class PeerMark:
    written: np.ndarray  # the stored values (the original where no step met the floor)
    step: float | None  # None: no step in STEP_RANGE met the floor
    psnr: float  # in the binding view
    view: View


def strongest_mark(method: type, bits: np.ndarray, frame: np.ndarray, meter: FrameMeter, image: MedicalImage,
                   floor: QualityFloor) -> PeerMark:
    """The largest step in STEP_RANGE whose written frame meets the floor (geometric bisection:
    PSNR falls about as 20 log10 s)."""
    view = marking_view(method, bits, frame, meter, image)

    def attempt(step: float) -> tuple[np.ndarray, float, bool]:
        written = peer_write(method, bits, step, frame, view, image)
        quality = meter.measure(written)
        return written, quality.psnr, meets_floor(quality, floor)

    low, high = STEP_RANGE
    written, psnr, met = attempt(low)
    if not met:
        return PeerMark(frame.copy(), None, psnr, view)
    best = PeerMark(written, low, psnr, view)
    written, psnr, met = attempt(high)
    if met:
        return PeerMark(written, high, psnr, view)
    for _ in range(BISECTION_STEPS):
        middle = math.sqrt(low * high)
        written, psnr, met = attempt(middle)
        if met:
            low, best = middle, PeerMark(written, middle, psnr, view)
        else:
            high = middle
    return best


def is_export(attack: Attack) -> bool:
    return any(step.function in EXPORTS for step in (attack, *attack.then))


@dataclass
class Tally:
    """One method's figures on one image set."""

    recovered: dict[str, int] = field(default_factory=dict)
    trials: dict[str, int] = field(default_factory=dict)
    bits_right: dict[str, float] = field(default_factory=dict)
    psnrs: list[float] = field(default_factory=list)  # written frames that carry a mark
    steps: list[float] = field(default_factory=list)
    unmarked: int = 0  # frames no step could mark within the floor
    embeds: int = 0
    embed_seconds: float = 0.0
    views: dict[str, int] = field(default_factory=dict)  # kind of the view each frame bound in
    failed: dict[str, list[str]] = field(default_factory=dict)  # attack: images (once per message)

    def add(self, attack: str, right: np.ndarray, image: str) -> None:
        self.recovered[attack] = self.recovered.get(attack, 0) + int(right.all())
        if not right.all():
            self.failed.setdefault(attack, []).append(image)
        self.trials[attack] = self.trials.get(attack, 0) + 1
        self.bits_right[attack] = self.bits_right.get(attack, 0.0) + float(right.mean())


def run_peer(method: type, sources: list, messages: list[bytes], attacks: list[Attack], floor: QualityFloor) -> Tally:
    tally = Tally()
    for label, load in sources:
        image = load()
        frame = image.pixels[0]  # every held-out image has one frame
        meter = frame_meters(image, floor)[0]
        for index, message in enumerate(messages):
            bits = np.unpackbits(np.frombuffer(message, dtype=np.uint8)).astype(bool)
            started = time.perf_counter()
            mark = strongest_mark(method, bits, frame, meter, image, floor)
            tally.embed_seconds += time.perf_counter() - started
            tally.embeds += 1
            # The kind of view the written frame binds in (an unmarked frame: the one it was tried in).
            bound = mark.view if mark.step is None else meter.view_named(meter.measure(mark.written).binding_view)
            tally.views[bound.kind] = tally.views.get(bound.kind, 0) + 1
            if mark.step is None:
                tally.unmarked += 1
                for attack in attacks:
                    tally.add(attack.label, np.zeros(len(bits), dtype=bool), label)
                continue
            tally.psnrs.append(mark.psnr)
            tally.steps.append(mark.step)
            # The same context (view, seed) as `evaluate_images` gives wm's frame for this message.
            context = FrameContext(image.stored_min, image.stored_max, mark.view, seed=index)
            for attack in attacks:
                received = attack(mark.written.astype(np.float64), context)
                shown = received if is_export(attack) else mark.view.display(received) * 255.0
                tally.add(attack.label, peer_read(method, len(bits), mark.step, shown) == bits, label)
    return tally


# -------------------------------------------------------------------------------- wm side ----

@contextmanager
def timed_embeds() -> Iterator[list[float]]:
    """Seconds of every `embed_pixels` call inside `evaluate_images` (its summary times nothing,
    and its total includes every attack and decode)."""
    seconds: list[float] = []
    untimed: Callable = evaluation.embed_pixels

    def timed(*args, **kwargs):
        started = time.perf_counter()
        outcome = untimed(*args, **kwargs)
        seconds.append(time.perf_counter() - started)
        return outcome

    evaluation.embed_pixels = timed
    try:
        yield seconds
    finally:
        evaluation.embed_pixels = untimed


def run_wm(model, sources: list, attacks: str, messages: int, message_bytes: int) -> Tally:
    """wm exactly as benchmarks/model_quality.py measures it, in the same figures as the peer."""
    options = EvaluationOptions(floor=QualityFloor(FLOOR_DB), attacks=parse_attack_list(attacks), messages=messages,
                                seed=0, message_bytes=message_bytes)
    with timed_embeds() as seconds:
        summary, rows, frame_psnrs = evaluate_images(sources, model, options)
    tally = Tally(psnrs=list(frame_psnrs), embeds=len(seconds), embed_seconds=sum(seconds),
                  views=dict(summary["binding_views"]))
    for name, figures in summary["attacks"].items():
        tally.trials[name] = figures["n"]
        tally.recovered[name] = round(figures["payload_recovery"] * figures["n"])
        tally.bits_right[name] = figures["bit_accuracy"] * figures["n"]
    for row in rows:
        if not row["payload_recovered"]:
            tally.failed.setdefault(row["attack"], []).append(row["path"])
    # An image the guard had to leave unmarked (scale 0) carries nothing.
    tally.unmarked = len({(r["path"], r["message_index"]) for r in rows if r["guard_scale"] == 0.0})
    for item in summary["skipped"]:
        print(f"  wm skipped {item['path']}: {item['reason']}", file=sys.stderr)
    return tally


# ------------------------------------------------------------------------------ the table ----

def rate(tally: Tally, attack: str) -> float:
    return tally.recovered.get(attack, 0) / max(tally.trials.get(attack, 0), 1)


def print_table(set_name: str, n_images: int, messages: int, message_bytes: int, tallies: dict[str, Tally],
                attacks: list[Attack], as_published: bool) -> None:
    peers = [name for name in tallies if name != "wm"]
    print(f"\n== {set_name}: {n_images} images × {messages} messages of {message_bytes} bytes "
          f"({8 * message_bytes} bits); every written frame ≥ {FLOOR_DB:g} dB in its binding view; peer "
          + ("as published" if as_published else "luminance only, sub-bands in order"))
    width = max(16, *(len(a.label) + 2 for a in attacks))
    cells = [*tallies, *(f"wm ÷ {peer}" for peer in peers)]
    header = f"{'attack':<{width}}" + "".join(f"{cell:>17}" for cell in cells)
    print(header)
    print("-" * len(header))
    for attack in attacks:
        line = f"{attack.label:<{width}}"
        for tally in tallies.values():
            line += f"{rate(tally, attack.label):>10.1%} ({tally.trials.get(attack.label, 0):>3})"
        for peer in peers:
            theirs = rate(tallies[peer], attack.label)
            line += f"{rate(tallies['wm'], attack.label) / theirs:>17.2f}" if theirs > 0 else f"{'-':>17}"
        print(line)
    print("-" * len(header))

    def footer(label: str, cell: Callable[[Tally], str]) -> None:
        print(f"{label:<{width}}" + "".join(f"{cell(tally):>17}" for tally in tallies.values()))

    footer("min PSNR (dB)", lambda t: f"{min(t.psnrs):.2f}" if t.psnrs else "-")
    footer("unmarked frames", lambda t: f"{t.unmarked} / {t.embeds}")
    footer("embed s/image", lambda t: f"{t.embed_seconds / max(t.embeds, 1):.3f}")
    footer("peer step s", lambda t: f"{np.min(t.steps):.1f}–{np.max(t.steps):.1f}" if t.steps else "-")
    for name, tally in tallies.items():
        views = ", ".join(f"{kind} {count}" for kind, count in sorted(tally.views.items()))
        failed = Counter(tally.failed.get("identity", []))
        print(f"  {name}: binding views {views}" + (
            "; identity failed on " + ", ".join(f"{image} ×{count}" for image, count in failed.items()) if failed else ""))


def as_json(tally: Tally) -> dict:
    return {
        "attacks": {name: {"payload_recovery": rate(tally, name), "n": n,
                           "bit_accuracy": tally.bits_right[name] / max(n, 1)} for name, n in tally.trials.items()},
        "psnr_min": min(tally.psnrs) if tally.psnrs else None,
        "unmarked_frames": tally.unmarked, "embeds": tally.embeds,
        "embed_seconds_per_image": tally.embed_seconds / max(tally.embeds, 1),
        "steps": {"min": min(tally.steps), "max": max(tally.steps)} if tally.steps else None,
        "view_kinds": tally.views,
        "failed_images": {attack: dict(Counter(images)) for attack, images in tally.failed.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="files,slices", help="image sets: files, slices (comma-separated)")
    parser.add_argument("--messages", type=int, default=3, help="messages per image")
    parser.add_argument("--message-bytes", type=int, default=8, help="message length (the peer reads raw bits)")
    parser.add_argument("--attacks", default=ATTACKS)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--peer-as-published", action="store_true",
                        help="the peer's encoders as published (detail sub-bands swapped)")
    args = parser.parse_args()

    model = load_model(None)
    attacks = parse_attack_list(args.attacks)
    floor = QualityFloor(FLOOR_DB)
    messages = evaluation_messages(args.messages, args.message_bytes, 0)  # what evaluate_images embeds
    methods = AS_PUBLISHED if args.peer_as_published else FIXED
    measured: dict = {}
    for set_name in args.set.split(","):
        sources = heldout.sources(set_name)
        tallies = {"wm": run_wm(model, sources, args.attacks, args.messages, args.message_bytes)}
        for name, method in methods.items():
            tallies[name] = run_peer(method, sources, messages, attacks, floor)
        measured[set_name] = {name: as_json(tally) for name, tally in tallies.items()}
        if not args.json:
            print_table(set_name, len(sources), args.messages, args.message_bytes, tallies, attacks,
                        args.peer_as_published)
    if args.json:
        print(dumps(measured, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
