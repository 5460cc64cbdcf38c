"""Embedding and extraction on whole images: model, payload codec and quality guard together.

`embed_pixels` is pure (pixels in, pixels out, nothing written); `marking.files.embed_file`
writes the file, re-reads it and measures what was actually stored. Extraction averages the decoder's
logits over all frames, since every frame carries the same payload.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..allocation import spread_over_views
from ..errors import BadInputError
from ..guard import GuardedFrame, guard_image
from ..io.medical_image import MedicalImage
from ..model.inputs import MIN_SIDE, normalised_frames
from ..model.key_field import host_band, host_signs, key_field, signs_above
from ..model.store import LoadedModel, load_model
from ..payload import DecodedPayload, LegacyPayloadCodec, PayloadCodec
from ..quality import FrameMeter, QualityFloor, frame_meters
from ..views import reader_views
from .fragile import fits_fragile_mark, fragile_residual, read_fragile
from .host_fit import fit_to_host
from .synchronisation import (estimate_rotation, estimate_rotation_by_pilot, estimate_scale_by_pilot,
                              estimate_tile_period, key_field_correlation, locate_key_field, mark_autocorrelation,
                              resample, rotate)


# Marking needs this many whole carrier tiles in an instance, counted over all its frames: the
# decoder folds (averages) the tiles of each frame and sums the evidence of every frame, and at
# the view floor one whole tile alone does not read back reliably, even with the mark fitted to
# its host (`host_fit`): textured crops of the held-out files, 8-byte IDs, 48 trials each, read
# back 23 times as one 64² frame and 40 as one 96² frame, but 44 and 48 times as two such frames,
# and 46 as one 128² frame (`benchmarks/small_frames.py --unchecked`). A square frame is marked on
# its own from TILES_PER_SIDE_TO_MARK tiles a side; smaller frames (nuclear medicine, cine,
# diffusion series) as a multi-frame instance of enough frames to hold TILES_TO_MARK tiles between
# them, each frame at least one tile a side (`frames_needed`). A small instance with fewer frames
# (a single 64² or 96² frame) is tried all the same, and given the fragile mark where the robust
# one does not read back (`marking.fragile`: lossless copies only); a larger one that does not
# read back is refused by embed's verification, and frames under one tile a side up front.
TILES_PER_SIDE_TO_MARK = 2
TILES_TO_MARK = 2


def smallest_markable_side(tile: int) -> int:
    """The shortest side a frame needs to be marked on its own by a model with `tile`-px tiles."""
    return max(MIN_SIDE, TILES_PER_SIDE_TO_MARK * tile)


def smallest_frame_side(tile: int) -> int:
    """The shortest side any frame needs, alone or in a multi-frame instance: one whole tile."""
    return max(MIN_SIDE, tile)


def frames_needed(rows: int, cols: int, tile: int) -> int | None:
    """How many frames of rows × cols an instance needs to be marked (1 for a frame big enough on
    its own); None when a frame is under one tile a side."""
    if min(rows, cols) < smallest_frame_side(tile):
        return None
    if min(rows, cols) >= smallest_markable_side(tile):
        return 1
    return -(-TILES_TO_MARK // ((rows // tile) * (cols // tile)))


def check_markable_size(image: MedicalImage, tile: int) -> None:
    """BadInputError (one line) unless the image has frames, and enough of them, to be marked."""
    needed = frames_needed(image.rows, image.cols, tile)
    single = smallest_markable_side(tile)
    if needed is None:
        raise BadInputError(
            f"{image.path}: frames of {image.rows}×{image.cols} px are too small to mark: this model needs at least "
            f"{smallest_frame_side(tile)} px on each side of every frame (one carrier tile), and {single} px to mark a "
            "frame on its own: mark the full-size image, not a crop or a thumbnail (`wm models` lists each model's sizes)")
    if image.n_frames < needed and not fits_fragile_mark(image):
        raise BadInputError(
            f"{image.path}: {image.n_frames} frame(s) of {image.rows}×{image.cols} px; this model marks frames of "
            f"this size only in an instance of at least {needed} of them (read together, they hold the "
            f"{TILES_TO_MARK} carrier tiles a mark needs; one {single}×{single} frame holds "
            f"{TILES_PER_SIDE_TO_MARK ** 2}): mark the full-size image or the whole series, not a crop or a frame cut "
            "from it (`wm models` lists each model's sizes)")


def check_readable_size(image: MedicalImage, tile: int) -> None:
    """BadInputError (one line) when the image's frames are under one carrier tile a side."""
    smallest = smallest_frame_side(tile)
    if image.rows < smallest or image.cols < smallest:
        raise BadInputError(
            f"{image.path}: image is {image.rows}×{image.cols} px; this model needs at least {smallest} px on "
            "each side to read it (one of its carrier tiles): read the full-size image, not a crop or a thumbnail "
            "(`wm models` lists each model's sizes)")


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


def _as_tensor(frames: np.ndarray, device=None):
    """(N, 1, rows, cols) float32 on `device` (the model's: `_device`), from (N, rows, cols)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).unsqueeze(1).to(device)


# A mark is carried only where the host's own content owns the sign of its secret band-pass
# (`key_field.host_signs`): where that exceeds 3 times what a pasted pattern could give it.
# A paste at 40 dB in the view a reader sees has an RMS of 1 % of that view's peak, and the
# band-pass (unit norm) gives noise of RMS σ a response of RMS σ: 3 % of the narrowest view's
# peak. Where the host is flatter than that, a mark could be copied from another image
# together with the content that owned its signs, so none is put there.
_SIGN_OWNERSHIP = 3 * 10 ** (-40 / 20)


def sign_thresholds(image: MedicalImage) -> np.ndarray:
    """Per frame, in stored units: the band-pass size above which the host owns its signs
    (`_SIGN_OWNERSHIP` of the narrowest view a reader uses for that frame)."""
    return np.array([_SIGN_OWNERSHIP * min(view.stored_span for view in reader_views(image, index))
                     for index in range(image.n_frames)])


def normalised_sign_thresholds(image: MedicalImage) -> np.ndarray:
    """`sign_thresholds` in the units the model sees the frames in (`normalised_frames`)."""
    return sign_thresholds(image) / float(image.stored_max - image.stored_min)


def export_thresholds(n_frames: int) -> np.ndarray:
    """`sign_thresholds` of an 8-bit export (PNG, JPEG): its one view is the stored 0..255."""
    return np.full(n_frames, _SIGN_OWNERSHIP * 255.0)


def field_for(model: LoadedModel, codec: PayloadCodec, frame: np.ndarray, threshold: float,
              top: int = 0, left: int = 0):
    """The field (1, 1, rows, cols) a keyed model marks and reads `frame` with, None for an
    unkeyed model: the key field over the frame's region of the marked image's canvas (it sits
    at `top`, `left` there), bound to the frame's content (`key_field.host_signs` above
    `threshold`, in the frame's units)."""
    if not model.model.config.keyed:
        return None
    return _bound_field(model, codec, host_signs(codec.field_seed, frame, threshold), top, left)


def _bound_field(model: LoadedModel, codec: PayloadCodec, signs: np.ndarray, top: int, left: int):
    """The key field at (`top`, `left`) of the canvas times a frame's host `signs`, (1, 1, rows, cols)."""
    rows, cols = signs.shape
    field = key_field(codec.field_seed, rows, cols, model.model.config.key_field_sigma, top, left)
    return _as_tensor((field * signs)[None], model.device)


def residual_for(model: LoadedModel, image: MedicalImage, raw_bits: np.ndarray,
                 codec: PayloadCodec | None = None) -> np.ndarray:
    """The encoder's residual in stored units, (frames, rows, cols) float64. A keyed model needs
    the codec, whose key gives the key field."""
    import torch

    frames = normalised_frames(image)
    device = model.device
    bits = torch.from_numpy(np.asarray(raw_bits, dtype=np.float32)).unsqueeze(0).to(device)
    if model.model.config.keyed and codec is None:
        raise ValueError("a keyed model's residual needs the codec (the key field comes from its key)")
    thresholds = normalised_sign_thresholds(image)
    residuals = []
    with torch.inference_mode():
        for frame, threshold in zip(frames, thresholds):
            field = field_for(model, codec, frame, threshold) if codec is not None else None
            residuals.append(model.model.encoder(_as_tensor(frame[None], device), bits, field)[0, 0].cpu().numpy())
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
    fragile: bool = False  # the fragile mark of a small frame (`marking.fragile`), not the robust one
    #: What `extract_payload` read in `pixels` while they were made, where it did (a small
    #: instance's robust mark, read back before the fragile one is considered): embed's
    #: self-check takes it rather than reading the same values again.
    read_back: DecodedPayload | None = None

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
    check_markable_size(image, model.model.config.tile)
    meters = frame_meters(image, floor, window)  # before the encoder runs: a bad domain fails fast
    raw_bits = codec.encode(message)
    residual = residual_for(model, image, raw_bits, codec)

    def guard(residual: np.ndarray) -> tuple[np.ndarray, list[GuardedFrame]]:
        spread = np.stack([spread_over_views(r, frame, meter, floor.psnr_min)
                           for r, frame, meter in zip(residual, image.pixels, meters)])
        frames = guard_image(image.pixels, spread, floor, meters, stored_min=image.stored_min,
                             stored_max=image.stored_max, fill_budget=fill_budget)
        return np.stack([frame.pixels for frame in frames]), frames

    if is_fitted_to_host(image):
        # The encoder's mark of the opposite bits has the opposite message part and the same rest
        # (the key's constant and the synchronisation pilot, which the resize and turn searches
        # find): half their sum is that rest, kept as it is, half their difference the part fitted.
        # On the smallest frames that rest serves nothing, and the whole mark is fitted.
        if fits_whole_mark(image, model.model.config.tile):
            kept, fitted = np.zeros_like(residual), residual
        else:
            opposite = residual_for(model, image, 1 - raw_bits, codec)
            kept, fitted = (residual + opposite) / 2, (residual - opposite) / 2
        # The encoder's mark is zero wherever a mark may not be (no owned sign, a range's end).
        guarded = fit_to_host(kept, fitted, residual != 0, raw_bits, guard, _differentiable_read(model, codec, image))
    else:
        guarded = guard(residual)[1]
    outcome = EmbedOutcome(np.stack([frame.pixels for frame in guarded]), guarded, meters)
    if isinstance(codec, PayloadCodec) and fits_fragile_mark(image):
        # The robust mark as embed's self-check reads it; where it does not give `message` back,
        # the fragile mark.
        decoded = extract_payload(model, codec, replace(image, pixels=outcome.pixels), fragile=False)
        if decoded.found and decoded.message == message:
            return replace(outcome, read_back=decoded)
        return fragile_outcome(codec, image, message, floor, meters) or outcome
    return outcome


def fragile_outcome(codec: PayloadCodec, image: MedicalImage, message: bytes, floor: QualityFloor,
                     meters: list[FrameMeter]) -> EmbedOutcome | None:
    """A small instance marked with the fragile mark where the robust one does not read back:
    its moves of one stored unit placed by the guard (every view measured, the range's ends and
    the padding kept; not scaled up to fill the budget), or None where it is too flat to carry
    it or the guard held back any move (shrunk to meet the floor, or a value a modality LUT shows
    outside the range refused): the moves are all or nothing."""
    residual = fragile_residual(codec, image, message)
    if residual is None:
        return None
    guarded = guard_image(image.pixels, residual, floor, meters, stored_min=image.stored_min,
                          stored_max=image.stored_max)
    pixels = np.stack([frame.pixels for frame in guarded])
    if not np.array_equal(pixels.astype(np.int64), image.pixels + residual.astype(np.int64)):
        return None
    return EmbedOutcome(pixels, guarded, meters, fragile=True)


# Instances whose mark is fitted to its host (`host_fit`): frames under this side (fewer than 4
# tiles a side), at most this many pixels in all (4 frames of 128², 16 of 64²). Larger ones read
# back without it (256² held-out slices and files: the README's robustness table; 6 frames of
# 128²: 48 of 48), and each of fitting's 30 steps is a decoder pass forwards and backwards over
# every pixel (two threads: 10 frames of 64² in about 0.9 s, 4 of 128² 1.7 s, 16 of 128² took 7 s).
FITTED_BELOW_SIDE = 256
FITTED_PIXELS_AT_MOST = 256 * 256


def is_fitted_to_host(image: MedicalImage) -> bool:
    """Whether `embed_pixels` fits the mark of `image` to its host (`host_fit`)."""
    return (min(image.rows, image.cols) < FITTED_BELOW_SIDE
            and image.n_frames * image.rows * image.cols <= FITTED_PIXELS_AT_MOST)


# Frames under this many tiles a side (96 px for the default model) have their whole mark fitted,
# not only the part that carries the bits: what the rest is kept for does not work there (a
# resize or turn is found from two periods of the pilot, a crop located only where a tile is
# left). Held-out 64² crops (`benchmarks/small_frames.py --unchecked --sides 64`, 1 to 6 frames,
# 48 trials each) read back 173 of 192 rather than 161, after a JPEG q80 export 104 rather than
# 68, after a 2° turn 24 rather than 35; on 96² training-split crops it read 3 and 4 more but lost
# every crop (26 of 72 to 0) and turn (9 to 0), so 96² frames keep the rest as it is.
WHOLE_MARK_FITTED_BELOW_TILES = 1.5


def fits_whole_mark(image: MedicalImage, tile: int) -> bool:
    """Whether the whole of a fitted mark is moved (else only its message part: `embed_pixels`)."""
    return min(image.rows, image.cols) < WHOLE_MARK_FITTED_BELOW_TILES * tile


def _differentiable_read(model: LoadedModel, codec: PayloadCodec, image: MedicalImage):
    """The quick reading of an uncropped `image` (`_read_uncropped`: the logits at the origin,
    averaged over frames) as a function of its stored values (a float64 tensor), differentiable
    in them. A keyed model's field is bound to the signs the values own, as a reader finds them
    (bound to the original's signs instead, fitted 96² crops read back as often but survived a
    JPEG q80 export 18 times in 48 rather than 23)."""
    import torch

    span = float(image.stored_max - image.stored_min)
    thresholds = normalised_sign_thresholds(image)
    decoder, device = model.model.decoder, model.device

    def read(values):
        frames = ((values - image.stored_min) / span).float()
        fields = [field_for(model, codec, frame.detach().numpy(), threshold)
                  for frame, threshold in zip(frames, thresholds)]
        field = None if fields[0] is None else torch.cat(fields)
        return decoder(frames.unsqueeze(1).to(device), field).mean(dim=0).cpu()

    return read


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


def _decode_logits(codec: PayloadCodec, logits: np.ndarray, grid_offset, rescaled_by,
                   inverted_too: bool = True) -> Reading:
    """The payload from one set of logits, in either polarity (`inverted_too`), else as stored.

    A viewer's export of a MONOCHROME1 image (radiographs) is written in display polarity, its
    values inverted. The unkeyed decoder standardises its input and is odd in it (measured: the
    logits of −x are those of x negated, correlation −0.999), so an inverted image gives the
    complement bits: trying −logits reads it with no second pass of the network, at the cost
    of one more payload decode (counted in the false-positive bound).

    A keyed read asks for the stored polarity only. Its field is bound to the host's signs,
    which invert with the image, so an inverted export reads as stored (`test_dcmtk_exports`).
    What reads inverted is a mark whose host signs did not invert with it: a removal that
    overshoots (marked − γ·(marked − denoised), γ about 2), and a copy whose pasted pattern
    owns the signs of a flat target itself. The second was accepted (stop 57: an exact residual
    of a 192² CT slice, which clipping at the stored black and white had made carry its host's
    edges inverted, pasted at 40 dB onto a mostly flat NM crop: 2 of about 520 such pastes)."""
    probabilities = _sigmoid(logits)
    as_stored, inverted = codec.decode_either_polarity(probabilities, inverted_too)
    if inverted.found:
        return Reading(1.0 - probabilities, inverted, grid_offset, rescaled_by, inverted=True)
    return Reading(probabilities, as_stored, grid_offset, rescaled_by)


# Offsets of the tile grid tried per image: the uncropped one, then the best-scoring others.
# Each try is one more payload decode, which bounds the false-positive cost of the search.
OFFSETS_TRIED = 4
# Geometries tried (as it is, rescaled back, turned back) and polarities (as stored, inverted:
# an unkeyed model's; a keyed read tries the stored one only, so its bound below has room).
GEOMETRIES_TRIED = 3
POLARITIES_TRIED = 2
#: Payload decodes an unmarked image can cost at most: each one is a chance of a false positive.
DECODES_PER_IMAGE = OFFSETS_TRIED * GEOMETRIES_TRIED * POLARITIES_TRIED


#: Payload decodes per older model whose marks are read too (`read_older_mark`: uncropped only).
OLDER_MODEL_DECODES = POLARITIES_TRIED
#: Payload decodes of a small instance's fragile mark (`extract_payload`: as stored only): its
#: coded bits' one, and its uncoded frame's one tag test a length class, counted as one more.
FRAGILE_DECODES = 2


def image_false_positive_bound(codec: PayloadCodec, older_models: int = 0) -> float:
    """Union bound on reporting a payload in an image that holds none for this key, over every
    decode `read_frames` may make (the uncropped fast path repeats offset (0, 0) of the first
    search with the same logits, so it adds nothing), the fragile mark's (counted for every
    image, though only small ones are read for it), and those of `older_models` read after it."""
    decodes = DECODES_PER_IMAGE + FRAGILE_DECODES + older_models * OLDER_MODEL_DECODES
    return decodes * codec.false_positive_bound


def _logits_by_offset(model: LoadedModel, frames: np.ndarray) -> np.ndarray:
    """(N, T, T) logits for every tile-grid offset, averaged over frames (they share a crop)."""
    import torch

    with torch.inference_mode():
        every = [model.model.decoder.logits_for_every_shift(_as_tensor(frame[None], model.device))[0]
                 for frame in frames]
        return torch.stack(every).mean(dim=0).cpu().numpy().astype(np.float64)


def _ranked_offsets(every_offset: np.ndarray) -> list[tuple[int, int]]:
    """The offsets whose logits are most decisive, best first (the right offset makes them
    decisive; heavy compression can fool this score)."""
    tile = every_offset.shape[-1]
    score = np.abs(every_offset).mean(axis=0).ravel()
    return [divmod(int(i), tile) for i in np.argsort(-score)[:OFFSETS_TRIED]]


@dataclass
class _KeyedResponses:
    """What a keyed reader computes once per set of frames and uses for every offset it tries
    and for its pilots: each frame's decoder feature maps and host signs (the convolutions and
    the band-pass are most of a read's time; neither depends on the offset), and where the host
    owns its signs strongly (`STRONG_OWNERSHIP`, for the fit test)."""

    features: list[np.ndarray]
    signs: list[np.ndarray]
    strong: list[np.ndarray]


def _keyed_responses(model: LoadedModel, codec: PayloadCodec, frames: np.ndarray,
                     thresholds: np.ndarray) -> _KeyedResponses | None:
    """The frames' `_KeyedResponses` for a keyed model, None for an unkeyed one."""
    if not model.model.config.keyed:
        return None
    bands = [host_band(codec.field_seed, frame) for frame in frames]
    return _KeyedResponses([_feature_maps(model, frame) for frame in frames],
                           [signs_above(band, threshold) for band, threshold in zip(bands, thresholds)],
                           [np.abs(band) > STRONG_OWNERSHIP * threshold for band, threshold in zip(bands, thresholds)])


def _logits_at(model: LoadedModel, codec: PayloadCodec, frames: np.ndarray, thresholds: np.ndarray,
               offset: tuple[int, int], responses: _KeyedResponses | None = None) -> np.ndarray:
    """The decoder's logits for `frames` cut from the marked image at `offset` (rows, cols),
    averaged over frames (they share a crop); a keyed model reads with its field there (bound
    to each frame's content above its threshold, `field_for`), from `responses` when already
    computed. An unkeyed model reads its grid at (0, 0)."""
    import torch

    decoder, device = model.model.decoder, model.device
    if responses is None:
        responses = _keyed_responses(model, codec, frames, thresholds)
    with torch.inference_mode():
        if responses is None:
            logits = torch.stack([decoder(_as_tensor(frame[None], device))[0] for frame in frames])
        else:
            logits = torch.stack([decoder.logits_from_features(torch.from_numpy(maps)[None].to(device),
                                                               _bound_field(model, codec, signs, *offset), offset)[0]
                                  for maps, signs in zip(responses.features, responses.signs)])
    return logits.mean(dim=0).cpu().numpy().astype(np.float64)


def _read_uncropped(model: LoadedModel, codec: PayloadCodec, frames: np.ndarray, thresholds: np.ndarray,
                    rescaled_by, origin: tuple[int, int] = (0, 0), responses=None) -> Reading:
    """The common case, an image that was not cropped: one plain decoder pass, without the
    search over offsets. `origin`: where `frames` sit in the image (its centre region), which a
    keyed model's field must be drawn at; an unkeyed model reads its grid at (0, 0)."""
    if model.model.config.keyed:
        return _keyed_reading(model, codec, frames, thresholds, origin, rescaled_by, responses)
    return _decode_logits(codec, _logits_at(model, codec, frames, thresholds, (0, 0)), (0, 0), rescaled_by)


def _read_at_offsets(model: LoadedModel, codec: PayloadCodec, frames: np.ndarray, thresholds: np.ndarray,
                     rescaled_by, origin: tuple[int, int] = (0, 0), responses=None,
                     at_origin: Reading | None = None) -> Reading:
    """The frames read at the offsets a crop may have moved the grid to. `at_origin`: a keyed
    read of these very frames at `origin` already made (`_read_uncropped`), not decoded again."""
    if model.model.config.keyed:
        return _read_keyed_at_offsets(model, codec, frames, thresholds, rescaled_by, origin, responses, at_origin)
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


_ORIGIN_SLACK = 8


def _feature_maps(model: LoadedModel, frame: np.ndarray) -> np.ndarray:
    """(K, rows, cols): the decoder's feature maps of one frame, what the keyed reader finds
    its pilots in. They respond to the mark far more cleanly than a plain high-pass (256²
    slices cut from training files: a crop's true shift ranks first or second of ~9,400 where
    the high-pass left it in the hundreds; a 0.75 resize is the best spectral fit in 24 of 24
    where the high-pass found it in 18)."""
    import torch

    with torch.inference_mode():
        features = model.model.decoder.feature_maps(_as_tensor(frame[None], model.device))[0]
        # float32, as the networks give them and as every search takes them: a float64 copy
        # was made and converted back by each of them.
        return np.ascontiguousarray(features.cpu().numpy(), dtype=np.float32)


def _read_keyed_at_offsets(model: LoadedModel, codec: PayloadCodec, frames: np.ndarray, thresholds: np.ndarray,
                           rescaled_by, origin: tuple[int, int], responses=None,
                           at_origin: Reading | None = None) -> Reading:
    """A keyed mark: at `origin` (unless `at_origin` holds that reading), then where the key's
    pilot says the frames were cut from (a crop moves them further from the marked image's
    top-left, never closer)."""
    config = model.model.config
    if responses is None:
        responses = _keyed_responses(model, codec, frames, thresholds)
    located = [offset for offset in locate_key_field(_bound_responses(responses), codec.field_seed,
                                                     config.key_field_sigma, OFFSETS_TRIED, _search_base(origin))
               if offset != origin][: OFFSETS_TRIED - 1]
    readings = []
    for offset in [origin] + located:
        if offset == origin and at_origin is not None:  # the same logits would decode the same way
            reading = at_origin
        else:
            reading = _keyed_reading(model, codec, frames, thresholds, offset, rescaled_by, responses)
        if reading.decoded.found:
            return reading
        readings.append(reading)
    return _unfitted_or(readings, readings[1] if len(readings) > 1 else readings[0])


def _keyed_reading(model: LoadedModel, codec: PayloadCodec, frames: np.ndarray, thresholds: np.ndarray,
                   offset: tuple[int, int], rescaled_by, responses: _KeyedResponses | None = None) -> Reading:
    """A keyed mark read at `offset`, in the stored polarity only (`_decode_logits`), and refused
    as not found (its message kept as a lead) where it does not fit the frames (`mark_fits`)."""
    if responses is None:
        responses = _keyed_responses(model, codec, frames, thresholds)
    logits = _logits_at(model, codec, frames, thresholds, offset, responses)
    reading = _decode_logits(codec, logits, offset, rescaled_by, inverted_too=False)
    if reading.decoded.found and isinstance(codec, PayloadCodec):
        if not mark_fits(model, codec, responses, offset, codec.encode(reading.decoded.message)):
            return replace(reading, decoded=DecodedPayload.not_found(unfitted_message=reading.decoded.message))
    return reading


def _unfitted_or(readings: list[Reading], otherwise: Reading) -> Reading:
    """Of readings that found no mark, one that refused a mark as unfitted (its lead is kept), else `otherwise`."""
    return next((reading for reading in readings if reading.decoded.unfitted_message is not None), otherwise)


# ---- does the mark fit its host? ---------------------------------------------------------------
# A keyed mark is written wherever its host owns the band-pass signs, so a genuine read finds the
# mark's evidence all over the frame. A copy cannot put it there: where the target's own content
# owns the signs, a pasted mark meets other signs and reads as noise. A copy reads only where it
# owns the signs itself, the target's flat parts (stop 57: the victim's band-pass content pasted
# with its mark at 40 dB, marked − Gaussian σ 1, accepted in 5 of 104 whole-image pastes). So the
# reader splits the frames into FIT_GRID² blocks and asks each for its own evidence (the read-out
# of its pixels alone, `_evidence_weights`, additive over blocks); were the mark spread as written, a
# block holding a share s of the owned pixels would hold about s of the whole's evidence. A block
# holding under SILENT_FRACTION of that is silent; a read whose silent blocks hold
# MOST_SILENT_SHARE of the owned pixels or more is refused (not found; its message kept as a lead).
# Chosen on held-out images (the copy pairs of `benchmarks/attacks_keyless.py`, marks under fresh
# keys; grid 3, fraction 1/4), silent shares of genuine reads (as marked, JPEG q80 and q50, noise
# 1 %): whole images 208 reads (52 marks), at most 0.31, 90 % at most 0.04; 192² cuts 97 reads,
# at most 0.10; 128² cuts 71 reads, at most 0.31; the 10 copies that decoded (marked − Gaussian
# σ 0.7, 1 and 1.5 at 40 and 44 dB), 0.40 to 0.61. Evidence scaled by its spread (a block's mean
# over its standard deviation) separated whole images more widely but not fitted small frames,
# whose fitting evens the logits out. What it cannot refuse: a copy onto a target so flat that
# the paste owns nearly all the signs it is read with (README, Security).
FIT_GRID = 3
SILENT_FRACTION = 0.25
MOST_SILENT_SHARE = 0.35
# The same question asked of strength rather than place (stop 59). A copy onto a target that is
# nearly all flat meets few silent blocks: the paste owns most of the signs it is read with. But
# a paste at the 40 dB floor (1 % RMS of the narrowest view's peak, through a unit-norm kernel it
# does not know) owns a pixel at STRONG_OWNERSHIP times the ownership threshold (15 % of that
# peak) only where its energy is concentrated, and where the target's own content owns a pixel
# that strongly, the pasted mark meets other signs. A genuine mark's evidence does not depend on
# how strongly its host owns a pixel. So where at least _FEWEST_STRONG_PIXELS are owned strongly,
# a read whose strongly owned pixels hold under STRONG_FIT of their share of the evidence is
# refused. Chosen on held-out images (the 192² copy pairs of `benchmarks/attacks_keyless.py`,
# marks under fresh keys, every paste's evidence measured whether it decoded or not; genuine
# reads as marked, JPEG q80 and q50, whole images and 128² and 192² cuts): genuine reads' strongly
# owned pixels held 0.74 to 1.26 of their share (328 reads); of the pastes that came near
# decoding (bit agreement ≥ 0.65), the blocks let 17 of 23 through, this test 5 of those.
# Not asked of how many pixels are owned strongly: a host whose texture is noise a few times
# the threshold (a test PNG of noise at 4.7 % of its peak) owns half its pixels and almost none
# strongly, as a paste onto a flat target does (README, Security).
STRONG_OWNERSHIP = 5.0
STRONG_FIT = 0.6
# Fewer strongly owned pixels than this (over all frames): their evidence is too noisy to weigh.
_FEWEST_STRONG_PIXELS = 500
# Blocks with fewer owned pixels than this (over all frames) are not asked: their evidence is noise.
_FEWEST_BLOCK_PIXELS = 50


def _evidence_weights(model: LoadedModel, codec: PayloadCodec, shape: tuple[int, int], offset: tuple[int, int],
                      bit_signs: np.ndarray) -> np.ndarray:
    """(maps, rows, cols): what each pixel's field-free features are weighed by to give its share
    of how much the read at `offset` says the bits (±1), the mean over bits of sign·(read-out −
    bias) before the fold is normalised. The fold and the read-out are linear, so that mean is a
    weight per map and tile place (the read-out's rows summed by the bits' signs, less their mean
    over the tile, which the fold takes out) times the key field there; a frame's host signs
    then bind it (`_evidence_maps`). Summed over any block, the block's evidence."""
    config = model.model.config
    tile, (rows, cols) = config.tile, shape
    readout = model.model.decoder.readout.weight.detach().cpu().numpy().astype(np.float64)
    weights = (bit_signs @ readout).reshape(config.decoder_maps, tile, tile) / len(bit_signs)
    weights = (weights - weights.mean(axis=(1, 2), keepdims=True)).astype(np.float32)  # as the features are
    # A read at `offset` rolls the fold by it: pixel (y, x) lands on place (y + top, x + left) mod tile.
    placed = weights[:, (np.arange(rows) + offset[0]) % tile][:, :, (np.arange(cols) + offset[1]) % tile]
    return placed * key_field(codec.field_seed, rows, cols, config.key_field_sigma, *offset)


def mark_fits(model: LoadedModel, codec: PayloadCodec, responses: _KeyedResponses, offset: tuple[int, int],
              raw_bits: np.ndarray) -> bool:
    """Whether the read at `offset` of `raw_bits` covers its frames as a mark written there would:
    no large silent part (`silent_share`), and its strongly owned pixels hold their share of the
    evidence (`strongly_owned_fit`)."""
    evidence, strong_evidence, owned, strong = _evidence_maps(model, codec, responses, offset, raw_bits)
    return (silent_share(evidence, owned) < MOST_SILENT_SHARE
            and strongly_owned_fit(float(evidence.sum()), float(strong_evidence.sum()), int(owned.sum()), int(strong.sum())))


def _evidence_maps(model: LoadedModel, codec: PayloadCodec, responses: _KeyedResponses, offset: tuple[int, int],
                   raw_bits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel, summed over the frames (which share shape and offset): the evidence for
    `raw_bits`, the part of it from frames that own the pixel strongly, how many frames own it,
    and how many own it strongly."""
    bit_signs = np.asarray(raw_bits, dtype=np.float64) * 2.0 - 1.0
    weights = _evidence_weights(model, codec, responses.signs[0].shape, offset, bit_signs)
    evidence, strong_evidence = np.zeros(weights.shape[1:]), np.zeros(weights.shape[1:])
    owned, strong = np.zeros(weights.shape[1:], np.int64), np.zeros(weights.shape[1:], np.int64)
    # A frame at a time: a long stack's maps are added up, never held together.
    for features, signs, mask in zip(responses.features, responses.signs, responses.strong):
        frame_evidence = (np.einsum("khw,khw->hw", features, weights) * signs).astype(np.float64)
        evidence += frame_evidence
        strong_evidence += np.where(mask, frame_evidence, 0.0)
        owned += signs != 0
        strong += mask
    return evidence, strong_evidence, owned, strong


def silent_share(evidence: np.ndarray, owned: np.ndarray) -> float:
    """The share of the owned pixels in blocks silent about the bits (see above)."""
    whole, owned_total = float(evidence.sum()), int(owned.sum())
    if whole <= 0.0 or owned_total == 0:
        return 1.0
    rows, cols = owned.shape
    asked = silent = 0
    for row in range(FIT_GRID):
        for col in range(FIT_GRID):
            block = (slice(row * rows // FIT_GRID, (row + 1) * rows // FIT_GRID),
                     slice(col * cols // FIT_GRID, (col + 1) * cols // FIT_GRID))
            owned_here = int(owned[block].sum())
            if owned_here < _FEWEST_BLOCK_PIXELS:
                continue
            asked += owned_here
            if float(evidence[block].sum()) < SILENT_FRACTION * whole * owned_here / owned_total:
                silent += owned_here
    return silent / asked if asked else 0.0


def strongly_owned_fit(whole: float, strong_evidence: float, owned: int, strong: int) -> bool:
    """Whether, of `owned` pixels holding evidence `whole`, the `strong` ones owned strongly hold
    their share of it (`strong_evidence`; see above)."""
    if whole <= 0.0:
        return False
    if strong < _FEWEST_STRONG_PIXELS:
        return True
    return strong_evidence >= STRONG_FIT * whole * strong / owned


def _search_base(origin: tuple[int, int]) -> tuple[int, int]:
    """Where the key field search starts: a little before `origin`, which after a resize is
    known only to a few px (a crop moves the frames further from the top-left, never closer)."""
    return max(0, origin[0] - _ORIGIN_SLACK), max(0, origin[1] - _ORIGIN_SLACK)


def _bound_responses(responses: _KeyedResponses) -> np.ndarray:
    """The frames' feature maps times their host signs, averaged (in float64): what the key field
    is found in. One frame's are its own (signs of ±1 and 0 multiply exactly)."""
    if len(responses.features) == 1:
        return responses.features[0] * responses.signs[0]
    return np.mean([maps * signs for maps, signs in zip(responses.features, responses.signs)], axis=0, dtype=np.float64)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits))


# Reading needs enough tiles, not every pixel: a 1024² centre region holds 1024 tiles. Larger
# images (radiographs of 2000²+) are read there, which keeps extraction fast and memory small.
DECODE_REGION = 1024


def _centre_origin(shape: tuple[int, int], size: int) -> tuple[int, int]:
    """Where the centre region of `size` px of an image of `shape` starts (rows, cols)."""
    return max(0, (shape[0] - size) // 2), max(0, (shape[1] - size) // 2)


def _busiest_origin(frames: np.ndarray, size: int) -> tuple[int, int]:
    """Where the region of `size` px that holds the most varying pixels starts (the centre on a
    tie): a keyed mark lives only where its host has content of its own, and a large frame
    may hold its anatomy off centre (a patch in the corner of a 2048² black frame)."""
    rows, cols = frames.shape[-2:]
    if rows <= size and cols <= size:
        return 0, 0
    first = frames[0]
    varying = (np.abs(np.diff(first, axis=0, prepend=first[:1])) + np.abs(np.diff(first, axis=1, prepend=first[:, :1]))) > 0
    # Counts per region from a summed-area table, over a grid of candidate origins.
    table = np.pad(varying.cumsum(axis=0).cumsum(axis=1), ((1, 0), (1, 0)))
    tops = sorted({*range(0, max(rows - size, 0) + 1, _REGION_STEP), max(rows - size, 0), _centre_origin((rows, cols), size)[0]})
    lefts = sorted({*range(0, max(cols - size, 0) + 1, _REGION_STEP), max(cols - size, 0), _centre_origin((rows, cols), size)[1]})
    centre = _centre_origin((rows, cols), size)
    best, best_count = centre, -1
    for top in tops:
        for left in lefts:
            bottom, right = min(rows, top + size), min(cols, left + size)
            count = table[bottom, right] - table[top, right] - table[bottom, left] + table[top, left]
            if count > best_count or (count == best_count and (top, left) == centre):
                best, best_count = (top, left), count
    return best


_REGION_STEP = 128


def _centre_region(frames: np.ndarray, size: int) -> np.ndarray:
    top, left = _centre_origin(frames.shape[-2:], size)
    return frames[..., top : top + size, left : left + size]


def read_frames(model: LoadedModel, codec: PayloadCodec, frames: np.ndarray, quick: bool = False,
                thresholds: np.ndarray | None = None) -> Reading:
    """Decode (frames, rows, cols) in any intensity unit: first as they are (any crop offset);
    if no payload is found, rescaled back when the mark's period says the image was resized,
    then turned back when its lattice says the image was rotated. `quick` tries the uncropped
    grid alone (one decoder pass). `thresholds`: per frame, in the frames' unit, where a keyed
    mark's host owns its signs (`sign_thresholds` of the image read); by default that of the
    frames' data range, the widest view (a narrower one, a CT window, reads more of the mark)."""
    frames = np.asarray(frames, dtype=np.float64)
    if thresholds is None and frames.ndim == 3:
        thresholds = _SIGN_OWNERSHIP * np.maximum(np.ptp(frames.reshape(len(frames), -1), axis=1), 1e-12)
    if frames.ndim != 3:
        origin = (0, 0)
    elif model.model.config.keyed:
        origin = _busiest_origin(frames, DECODE_REGION)
    else:
        origin = _centre_origin(frames.shape[-2:], DECODE_REGION)
    frames = frames[..., origin[0]: origin[0] + DECODE_REGION, origin[1]: origin[1] + DECODE_REGION]
    tile = model.model.config.tile
    if frames.ndim != 3 or min(frames.shape[-2:]) < tile:
        # Less than one whole tile (e.g. a tiny image or a heavy crop): nothing can be read.
        return Reading(np.full(model.n_bits, 0.5), DecodedPayload.not_found(), (0, 0), (1.0, 1.0))
    unit = max(float(np.abs(frames).max()), 1.0)
    frames = (frames / unit).astype(np.float32)  # units do not matter
    thresholds = np.asarray(thresholds, dtype=np.float64) / unit
    # A keyed read's offset search starts from this reading at the origin rather than decoding
    # it again (an unkeyed one's logits come from another pass there: decoded again, the same
    # bits give the same answer, so the false-positive bound does not change).
    responses = _keyed_responses(model, codec, frames, thresholds)  # once for every try below
    uncropped = _read_uncropped(model, codec, frames, thresholds, (1.0, 1.0), origin, responses)
    if uncropped.decoded.found or quick:
        return uncropped
    first = _read_at_offsets(model, codec, frames, thresholds, (1.0, 1.0), origin, responses, at_origin=uncropped)
    if first.decoded.found:
        return first
    # An unkeyed mark's period and angle come from its autocorrelation; a keyed one's from its pilots.
    correlation = None if model.model.config.keyed else mark_autocorrelation(frames[0])
    rescaled = _rescaled_back(model, codec, frames, thresholds, origin, correlation, responses)
    if rescaled is not None:
        second = _read_at_offsets(model, codec, rescaled.frames, thresholds, rescaled.factors, rescaled.origin,
                                  rescaled.responses)
        if second.decoded.found:
            return second
    degrees = _rotation(model, frames[0], correlation, responses.features[0] if responses else None)
    if degrees is not None:
        turned = np.stack([rotate(frame, degrees) for frame in frames]).astype(np.float32)
        third = _read_at_offsets(model, codec, turned, thresholds, (1.0, 1.0), origin)
        if third.decoded.found:
            third.rotated_by = degrees
            return third
    return _unfitted_or([first] + ([second] if rescaled is not None else []) + ([third] if degrees is not None else []),
                        first)


@dataclass
class _Rescaled:
    """Frames scaled back to the marked size: the factors, where they sit in the marked image
    (a keyed field is drawn there) and, for a keyed model, their responses."""

    frames: np.ndarray
    factors: tuple[float, float]
    origin: tuple[int, int]
    responses: _KeyedResponses | None = None


def _scaled_back(frames: np.ndarray, factors: tuple[float, float], origin: tuple[int, int],
                 tile: int) -> _Rescaled | None:
    """The frames' centre scaled by `factors` (at most a decode region once scaled), or None
    when less than a tile would remain."""
    region = round(DECODE_REGION / max(factors))
    inner = _centre_origin(frames.shape[-2:], region)
    scaled = np.stack([resample(frame, *factors) for frame in _centre_region(frames, region)]).astype(np.float32)
    if min(scaled.shape[-2:]) < tile:
        return None
    return _Rescaled(scaled, factors, (round((origin[0] + inner[0]) * factors[0]), round((origin[1] + inner[1]) * factors[1])))


# A keyed mark's public pilot this strong at its best scale is worth checking with the key field
# (unmarked 256² training slices: up to 5.4; marked ones resized by 0.75: 5.4 to 11).
_PILOT_WORTH_CHECKING = 4.8
# The scales around the pilot's that the key field chooses from (relative steps): a 0.3 % error
# turns a 256² slice's raw-bit agreement from 0.98 into 0.83.
_KEY_SCALE_STEPS = np.arange(-0.003, 0.003 + 1e-9, 0.001)


def _rescaled_back(model: LoadedModel, codec: PayloadCodec, frames: np.ndarray, thresholds: np.ndarray,
                   origin: tuple[int, int], correlation: np.ndarray | None,
                   responses: _KeyedResponses | None) -> _Rescaled | None:
    """The frames scaled back to the marked size when they look resized, else None. An unkeyed
    mark's period comes from its whole repeated mark. A keyed mark's scale comes from its public
    pilot (`estimate_scale_by_pilot`), to a few tenths of a percent on small frames, and is then
    chosen among the scales around it by how well the frames, scaled back, correlate with the key
    field (`key_field_correlation`: decode-free, so the false-positive bound is unchanged)."""
    tile = model.model.config.tile
    if not model.model.config.keyed:
        period = estimate_tile_period(frames[0], tile, correlation)
        if period is None or max(abs(p / tile - 1.0) for p in period) < 0.005:
            return None
        return _scaled_back(frames, (tile / period[0], tile / period[1]), origin, tile)
    pilot = getattr(model.model.encoder, "sync_pilot", None)
    if pilot is None or responses is None:
        return None
    scale, strength = estimate_scale_by_pilot(responses.features[0], tile, pilot.cpu().numpy().astype(np.float64))
    if strength < _PILOT_WORTH_CHECKING:
        return None
    best, best_score = None, -np.inf
    for step in _KEY_SCALE_STEPS:
        candidate_scale = scale * (1.0 + step)
        if abs(candidate_scale - 1.0) < 0.005:
            continue
        candidate = _scaled_back(frames, (1.0 / candidate_scale, 1.0 / candidate_scale), origin, tile)
        if candidate is None:
            continue
        candidate.responses = _keyed_responses(model, codec, candidate.frames, thresholds)
        score = float(key_field_correlation(_bound_responses(candidate.responses), codec.field_seed,
                                            model.model.config.key_field_sigma, _search_base(candidate.origin)).max())
        if score > best_score:
            best, best_score = candidate, score
    return best


def _rotation(model: LoadedModel, frame: np.ndarray, correlation: np.ndarray | None,
              features: np.ndarray | None) -> float | None:
    """Degrees to turn a frame back by: a keyed model's from its public pilot in the frame's
    `features` (`estimate_rotation_by_pilot`), an unkeyed one's from the lattice of its
    repeated mark."""
    tile = model.model.config.tile
    if not model.model.config.keyed:
        return estimate_rotation(frame, tile, correlation)
    pilot = getattr(model.model.encoder, "sync_pilot", None)
    return None if pilot is None else estimate_rotation_by_pilot(features, tile, pilot.cpu().numpy().astype(np.float64))


def extract_payload(model: LoadedModel, codec: PayloadCodec, image: MedicalImage,
                    full_search: bool = True, fragile: bool = True) -> DecodedPayload:
    """The payload of an image; without `full_search`, only as marked (no crop, resize or turn).
    Where the robust mark gives none, a small instance's fragile mark (`marking.fragile`), unless
    not `fragile`."""
    check_readable_size(image, model.model.config.tile)
    thresholds = normalised_sign_thresholds(image)
    decoded = read_frames(model, codec, normalised_frames(image), quick=not full_search, thresholds=thresholds).decoded
    if not decoded.found and fragile:
        fragile_read = read_fragile_mark(codec, image.pixels)
        return fragile_read if fragile_read.found else decoded  # an unfitted mark's lead kept
    return decoded


def read_fragile_mark(codec, pixels: np.ndarray) -> DecodedPayload:
    """The fragile mark's payload in stored values `pixels` (`fragile.read_fragile`); not found for
    a format-1 codec, which never wrote one."""
    if not isinstance(codec, PayloadCodec):
        return DecodedPayload.not_found()
    return read_fragile(codec, pixels)


def older_readers(model: LoadedModel, key: str | bytes | None) -> list[tuple[LoadedModel, PayloadCodec]]:
    """The models whose marks `model` reads too (its card's `reads_marks_of`: the unkeyed
    models shipped before it), each with its codec for `key`, their networks where `model`'s are
    (on a GPU run they ran on the CPU: about 40 ms of one core's work for every unmarked 512² CT)."""
    return [(older, codec_for(older, key)) for older in (load_model(name, str(model.device))
                                                          for name in model.reads_marks_of)]


def read_older_mark(older: list[tuple[LoadedModel, PayloadCodec]], image: MedicalImage) -> tuple[DecodedPayload, str | None]:
    """A mark an older, unkeyed model wrote, read as it was written (no crop, resize or turn:
    each older model adds only `OLDER_MODEL_DECODES` to the false-positive bound; name it with
    --model for the full search), and that model's name; (not found, None) when there is none.
    Such a mark is authentic under the key, but anyone with wm can read, remove or copy it."""
    for model, codec in older:
        if min(image.rows, image.cols) < smallest_frame_side(model.model.config.tile):
            continue
        decoded = extract_payload(model, codec, image, full_search=False, fragile=False)
        if decoded.found:
            return decoded, model.name
    return DecodedPayload.not_found(), None


def read_any_mark(model: LoadedModel, codec: PayloadCodec, image: MedicalImage,
                  older: list[tuple[LoadedModel, PayloadCodec]] = ()) -> tuple[DecodedPayload, str | None]:
    """The image's mark, read with `model` and, where it finds none, with the `older` models;
    and the name of the unkeyed model that wrote it (None for a keyed model's mark or none)."""
    decoded = extract_payload(model, codec, image)
    if decoded.found:
        # A fragile mark depends on the key alone, whichever model reads it: never an unkeyed model's.
        return decoded, None if model.keyed or decoded.fragile else model.name
    if older:
        older_read, name = read_older_mark(older, image)
        if older_read.found:
            return older_read, name
    return decoded, None  # an unfitted mark's lead kept

