"""Embedding and extraction on whole images: model, payload codec and quality guard together.

`embed_pixels` is pure (pixels in, pixels out, nothing written); `embed` in the CLI writes the
file, re-reads it and measures what was actually stored. Extraction averages the decoder's
logits over all frames, since every frame carries the same payload.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .datasets import MIN_SIDE, normalised_frames
from .errors import BadInputError
from .guard import GuardedFrame, guard_image
from .image_io import MedicalImage
from .model_store import LoadedModel
from .payload import DecodedPayload, PayloadCodec
from .quality import QualityFloor


def check_image_size(image: MedicalImage, tile: int) -> None:
    smallest = max(MIN_SIDE, tile)
    if image.rows < smallest or image.cols < smallest:
        raise BadInputError(
            f"{image.path}: image is {image.rows}×{image.cols} px; wm needs at least {smallest} px on each side"
        )


def codec_for(model: LoadedModel, key: str | bytes | None) -> PayloadCodec:
    return PayloadCodec(model.n_bits, key=key, parity_bytes=model.parity_bytes)


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
    return np.stack(residuals).astype(np.float64) * span


@dataclass
class EmbedOutcome:
    pixels: np.ndarray
    frames: list[GuardedFrame]

    @property
    def guard_acted(self) -> bool:
        return any(frame.scale < 1.0 for frame in self.frames)


def embed_pixels(
    model: LoadedModel,
    codec: PayloadCodec,
    image: MedicalImage,
    message: bytes,
    floor: QualityFloor,
    window: tuple[float, float] | None,
) -> EmbedOutcome:
    check_image_size(image, model.model.config.tile)
    raw_bits = codec.encode(message)
    residual = residual_for(model, image, raw_bits)
    guarded = guard_image(
        image.pixels, residual, floor,
        stored_min=image.stored_min, stored_max=image.stored_max,
        nominal_peak=image.nominal_peak, window=window,
    )
    return EmbedOutcome(np.stack([frame.pixels for frame in guarded]), guarded)


def bit_probabilities(model: LoadedModel, frames: np.ndarray) -> np.ndarray:
    """P(bit = 1) per raw bit from (frames, rows, cols) float frames; logits averaged over frames."""
    import torch

    with torch.inference_mode():
        logits = [model.model.decoder(_as_tensor(frame[None]))[0] for frame in frames]
        mean_logits = torch.stack(logits).mean(dim=0)
    return torch.sigmoid(mean_logits).numpy().astype(np.float64)


def extract_payload(model: LoadedModel, codec: PayloadCodec, image: MedicalImage) -> DecodedPayload:
    check_image_size(image, model.model.config.tile)
    return codec.decode(bit_probabilities(model, normalised_frames(image)))
