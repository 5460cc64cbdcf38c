"""Embedding and extraction on whole images: model, payload codec and quality guard together.

`embed_pixels` is pure (pixels in, pixels out, nothing written); `marking.files.embed_file`
writes the file, re-reads it and measures what was actually stored. Extraction averages the decoder's
logits over all frames, since every frame carries the same payload.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..allocation import spread_over_views
from ..errors import BadInputError
from ..guard import GuardedFrame, guard_image
from ..io.medical_image import MedicalImage
from ..model.inputs import MIN_SIDE, normalised_frames
from ..model.store import LoadedModel
from ..payload import DecodedPayload, LegacyPayloadCodec, PayloadCodec
from ..quality import FrameMeter, QualityFloor, frame_meters
from .synchronisation import estimate_rotation, estimate_tile_period, mark_autocorrelation, resample, rotate


# Marking needs this many whole tiles along each side: the decoder folds (averages) the tiles,
# and at the view floor a frame of one whole tile does not read back reliably (random crops of
# the held-out files, flat ones included, shipped model, 8-byte IDs, 96 trials each: identity
# recovery 34 % at 64², 51 % at 96², 81 % at 128², 90 % at 256²; `benchmarks/model_quality.py
# --sizes`). Smaller frames are refused up front; larger ones that still do not read back are
# refused by embed's verification.
TILES_PER_SIDE_TO_MARK = 2


def smallest_markable_side(tile: int) -> int:
    """The shortest side a frame needs to be marked by a model with `tile`-px carrier tiles."""
    return max(MIN_SIDE, TILES_PER_SIDE_TO_MARK * tile)


def check_image_size(image: MedicalImage, smallest: int, action: str = "mark") -> None:
    if image.rows < smallest or image.cols < smallest:
        raise BadInputError(
            f"{image.path}: image is {image.rows}×{image.cols} px; this model needs at least {smallest} px on "
            f"each side to {action} it ({TILES_PER_SIDE_TO_MARK} of its carrier tiles): {action} the full-size "
            "image, not a crop or a thumbnail (`wm models` lists each model's smallest frame)"
        )


def codec_for(model: LoadedModel, key: str | bytes | None):
    """The payload codec of the model's card: format 2 (`PayloadCodec`), or format 1
    (`LegacyPayloadCodec`) for a model whose card predates it."""
    if model.payload_format == 1:
        return LegacyPayloadCodec(model.n_bits, key=key, parity_bytes=model.legacy_parity_bytes)
    return PayloadCodec(model.n_bits, key=key)


def legacy_codec_for(model: LoadedModel, key: str | bytes | None) -> LegacyPayloadCodec | None:
    """The format-1 codec for marks this model wrote before payload v2 (None if it never did)."""
    if model.payload_format == 1 or model.legacy_parity_bytes is None:
        return None
    return LegacyPayloadCodec(model.n_bits, key=key, parity_bytes=model.legacy_parity_bytes)


def _as_tensor(frames: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).unsqueeze(1)


def residual_for(model: LoadedModel, image: MedicalImage, raw_bits: np.ndarray) -> np.ndarray:
    """The encoder's residual in stored units, (frames, rows, cols) float64."""
    import torch

    frames = normalised_frames(image)
    bits = torch.from_numpy(np.asarray(raw_bits, dtype=np.float32)).unsqueeze(0)
    residuals = []
    with torch.inference_mode():
        for frame in frames:
            residuals.append(model.model.encoder(_as_tensor(frame[None]), bits)[0, 0].numpy())
    span = float(image.stored_max - image.stored_min)
    residual = np.stack(residuals).astype(np.float64) * span
    return confine_to_unclipped(residual, image.pixels, image.stored_min, image.stored_max,
                                model.model.config.tile)


# Confine the mark to pixels inside the stored range only where they hold at least this many
# tiles' worth of pixels: the decoder averages tiles, and with fewer, the one-sided mark on the
# range's ends is still worth more than its absence (a 256² corner of black around an
# ultrasound sector carries nothing otherwise).
_TILES_NEEDED_INSIDE = 16


def confine_to_unclipped(residual: np.ndarray, pixels: np.ndarray, stored_min: int, stored_max: int,
                         tile: int) -> np.ndarray:
    """The residual with zeros where the stored value sits at either end of its range, in every
    frame with enough pixels inside the range to carry the mark alone.

    A pixel at the range's end (the black outside an ultrasound sector, a saturated radiograph)
    can only move one way: clipping removes half of any signed mark there and leaves a one-sided
    offset that compression flattens. The PSNR budget is better spent where the mark stays
    two-sided; with the budget filled, the guard then gives the anatomy all of it. On the
    held-out ultrasound (72 % exact black), JPEG q50 bit accuracy goes from 0.91 to 1.00.
    Such pixels are also left exactly as they were.
    """
    at_an_end = (pixels <= stored_min) | (pixels >= stored_max)
    ends_per_frame = np.count_nonzero(at_an_end.reshape(len(at_an_end), -1), axis=1)
    # Counted where extraction reads (the centre region of large images), not frame-wide: a
    # 2048² frame whose anatomy lies outside its centre would otherwise be read as empty.
    read = _centre_region(at_an_end, DECODE_REGION)
    inside_read = read[0].size - np.count_nonzero(read.reshape(len(read), -1), axis=1)
    confine = (ends_per_frame > 0) & (inside_read >= _TILES_NEEDED_INSIDE * tile * tile)
    if not confine.any():
        return residual
    confined = residual.copy()
    for frame in np.flatnonzero(confine):
        confined[frame][at_an_end[frame]] = 0.0
    return confined


@dataclass
class EmbedOutcome:
    pixels: np.ndarray
    frames: list[GuardedFrame]
    meters: list[FrameMeter]  # the views each frame was measured in

    @property
    def guard_acted(self) -> bool:
        return any(frame.scale < 1.0 for frame in self.frames)


def embed_pixels(
    model: LoadedModel,
    codec: PayloadCodec,
    image: MedicalImage,
    message: bytes,
    floor: QualityFloor,
    window: tuple[float, float] | None = None,
    fill_budget: bool = True,
) -> EmbedOutcome:
    """Mark every frame under the floor. `window` is the user's `--window` (centre, width in
    modality units), one more view the floor holds in (see `quality.frame_meters`)."""
    check_image_size(image, smallest_markable_side(model.model.config.tile))
    meters = frame_meters(image, floor, window)  # before the encoder runs: a bad domain fails fast
    raw_bits = codec.encode(message)
    residual = residual_for(model, image, raw_bits)
    residual = np.stack([spread_over_views(r, frame, meter, floor.psnr_min)
                         for r, frame, meter in zip(residual, image.pixels, meters)])
    guarded = guard_image(image.pixels, residual, floor, meters, stored_min=image.stored_min,
                          stored_max=image.stored_max, fill_budget=fill_budget)
    return EmbedOutcome(np.stack([frame.pixels for frame in guarded]), guarded, meters)


@dataclass
class Reading:
    """What the decoder read from an image: per-bit probabilities (in the polarity that was
    found, or as read), the payload, and the geometry found."""

    probabilities: np.ndarray
    decoded: DecodedPayload
    grid_offset: tuple[int, int]
    rescaled_by: tuple[float, float]
    rotated_by: float = 0.0
    inverted: bool = False


def _decode_logits(codec: PayloadCodec, logits: np.ndarray, grid_offset, rescaled_by) -> Reading:
    """The payload from one set of logits, in either polarity.

    A viewer's export of a MONOCHROME1 image (radiographs) is written in display polarity, its
    values inverted. The decoder standardises its input and is odd in it (measured: the logits
    of −x are those of x negated, correlation −0.999), so an inverted image gives the
    complement bits: trying −logits reads it with no second pass of the network, at the cost
    of one more payload decode (counted in the false-positive bound)."""
    probabilities = _sigmoid(logits)
    reading = Reading(probabilities, codec.decode(probabilities), grid_offset, rescaled_by)
    if reading.decoded.found:
        return reading
    inverted = 1.0 - probabilities
    decoded = codec.decode(inverted)
    return Reading(inverted, decoded, grid_offset, rescaled_by, inverted=True) if decoded.found else reading


# Offsets of the tile grid tried per image: the uncropped one, then the best-scoring others.
# Each try is one more payload decode, which bounds the false-positive cost of the search.
OFFSETS_TRIED = 4
# Geometries tried (as it is, rescaled back, turned back) and polarities (as stored, inverted).
GEOMETRIES_TRIED = 3
POLARITIES_TRIED = 2
#: Payload decodes an unmarked image can cost at most: each one is a chance of a false positive.
DECODES_PER_IMAGE = OFFSETS_TRIED * GEOMETRIES_TRIED * POLARITIES_TRIED


def image_false_positive_bound(codec: PayloadCodec) -> float:
    """Union bound on reporting a payload in an image that holds none for this key, over every
    decode `read_frames` may make (the uncropped fast path repeats offset (0, 0) of the first
    search with the same logits, so it adds nothing)."""
    return DECODES_PER_IMAGE * codec.false_positive_bound


def _logits_by_offset(model: LoadedModel, frames: np.ndarray) -> np.ndarray:
    """(N, T, T) logits for every tile-grid offset, averaged over frames (they share a crop)."""
    import torch

    with torch.inference_mode():
        every = [model.model.decoder.logits_for_every_shift(_as_tensor(frame[None]))[0] for frame in frames]
        return torch.stack(every).mean(dim=0).numpy().astype(np.float64)


def _ranked_offsets(every_offset: np.ndarray) -> list[tuple[int, int]]:
    """The offsets whose logits are most decisive, best first (the right offset makes them
    decisive; heavy compression can fool this score)."""
    tile = every_offset.shape[-1]
    score = np.abs(every_offset).mean(axis=0).ravel()
    return [divmod(int(i), tile) for i in np.argsort(-score)[:OFFSETS_TRIED]]


def _read_uncropped(model: LoadedModel, codec: PayloadCodec, frames: np.ndarray, rescaled_by) -> Reading:
    """The common case, an image that was not cropped: one plain decoder pass at grid offset
    (0, 0), without the FFT over every offset."""
    import torch

    with torch.inference_mode():
        logits = torch.stack([model.model.decoder(_as_tensor(frame[None]))[0] for frame in frames]).mean(dim=0)
    return _decode_logits(codec, logits.numpy().astype(np.float64), (0, 0), rescaled_by)


def _read_at_offsets(model: LoadedModel, codec: PayloadCodec, frames: np.ndarray, rescaled_by) -> Reading:
    every_offset = _logits_by_offset(model, frames)
    ranked = _ranked_offsets(every_offset)
    # (0, 0) first, since most images are not cropped and the score can be fooled.
    candidates = [(0, 0)] + [offset for offset in ranked if offset != (0, 0)][: OFFSETS_TRIED - 1]
    readings = []
    for offset in candidates:
        reading = _decode_logits(codec, every_offset[:, offset[0], offset[1]], offset, rescaled_by)
        if reading.decoded.found:
            return reading
        readings.append(reading)
    # Nothing decoded: report what a blind reader believes most, the best-scoring offset.
    return next(r for r in readings if r.grid_offset == ranked[0])


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits))


# Reading needs enough tiles, not every pixel: a 1024² centre region holds 1024 tiles. Larger
# images (radiographs of 2000²+) are read there, which keeps extraction fast and memory small.
DECODE_REGION = 1024


def _centre_region(frames: np.ndarray, size: int) -> np.ndarray:
    rows, cols = frames.shape[-2:]
    top = max(0, (rows - size) // 2)
    left = max(0, (cols - size) // 2)
    return frames[..., top : top + size, left : left + size]


def read_frames(model: LoadedModel, codec: PayloadCodec, frames: np.ndarray, quick: bool = False) -> Reading:
    """Decode (frames, rows, cols) in any intensity unit: first as they are (any crop offset);
    if no payload is found, rescaled back when the mark's period says the image was resized,
    then turned back when its lattice says the image was rotated. `quick` tries the uncropped
    grid alone (one decoder pass)."""
    frames = _centre_region(np.asarray(frames, dtype=np.float64), DECODE_REGION)
    tile = model.model.config.tile
    if frames.ndim != 3 or min(frames.shape[-2:]) < tile:
        # Less than one whole tile (e.g. a tiny image or a heavy crop): nothing can be read.
        return Reading(np.full(model.n_bits, 0.5), DecodedPayload.not_found(), (0, 0), (1.0, 1.0))
    frames = (frames / max(float(np.abs(frames).max()), 1.0)).astype(np.float32)  # units do not matter
    # Offset (0, 0) is decoded here and again inside the offset search when this fails: the
    # same bits give the same answer, so the false-positive bound does not change.
    uncropped = _read_uncropped(model, codec, frames, (1.0, 1.0))
    if uncropped.decoded.found or quick:
        return uncropped
    first = _read_at_offsets(model, codec, frames, (1.0, 1.0))
    if first.decoded.found:
        return first
    correlation = mark_autocorrelation(frames[0])
    period = estimate_tile_period(frames[0], tile, correlation)
    if period is not None and max(abs(p / tile - 1.0) for p in period) >= 0.005:
        factors = (tile / period[0], tile / period[1])
        region = round(DECODE_REGION / max(factors))
        rescaled = np.stack([resample(frame, *factors) for frame in _centre_region(frames, region)]).astype(np.float32)
        if min(rescaled.shape[-2:]) >= tile:
            second = _read_at_offsets(model, codec, rescaled, factors)
            if second.decoded.found:
                return second
    degrees = estimate_rotation(frames[0], tile, correlation)
    if degrees is not None:
        turned = np.stack([rotate(frame, degrees) for frame in frames]).astype(np.float32)
        third = _read_at_offsets(model, codec, turned, (1.0, 1.0))
        if third.decoded.found:
            third.rotated_by = degrees
            return third
    return first


def extract_payload(model: LoadedModel, codec: PayloadCodec, image: MedicalImage,
                    full_search: bool = True) -> DecodedPayload:
    """The payload of an image; without `full_search`, only as marked (no crop, resize or turn)."""
    check_image_size(image, max(MIN_SIDE, model.model.config.tile), action="read")
    return read_frames(model, codec, normalised_frames(image), quick=not full_search).decoded
