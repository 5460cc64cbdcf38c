"""Encoder and decoder: learned per-bit carrier tiles, content-adaptive strength, folding decoder.

Why this design (design notes §3): HiDDeN-style broadcast-and-concatenate message injection
learns too slowly on a CPU. Here each raw bit owns a learned `tile × tile` carrier pattern. The
message picks signs (+1 for a one, -1 for a zero), the signed carriers are summed into one tile,
the tile is repeated over the whole image, and a small CNN decides how strongly each pixel may
carry it (more in texture, less in flat regions). The decoder suppresses the anatomy with a small
CNN, folds the feature map (averages all tiles onto one), and reads the bits with a linear
layer. Folding means that a 512² CT averages 256 copies of the tile: the signal grows with the
image while the anatomy, which is not periodic, averages away.

Both networks are fully convolutional up to the fold, so any image of at least one tile (and at
least 64 px, the tool's minimum) works, square or not. Tiles are anchored at the top-left pixel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class NetworkConfig:
    n_bits: int = 256
    tile: int = 32
    strength_channels: int = 16
    decoder_channels: int = 16
    decoder_maps: int = 2
    # Gaussian low-pass (sigma in px) applied to the message tile. JPEG, resizing and blur keep
    # low frequencies and drop high ones; with the PSNR budget fixed, a smoother tile puts the
    # mark's energy where it survives them. 0 disables it.
    carrier_smoothing: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def standardise(images: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Zero mean, unit standard deviation per image: the networks then ignore gain and offset."""
    mean = images.mean(dim=(-2, -1), keepdim=True)
    std = images.std(dim=(-2, -1), keepdim=True)
    return (images - mean) / (std + eps)


def _three_layer_cnn(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1, padding_mode="reflect"),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 3, padding=1, padding_mode="reflect"),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_channels, 3, padding=1, padding_mode="reflect"),
    )


def tile_to(pattern: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Repeat (B, T, T) tiles to cover (B, height, width), anchored at the top-left pixel."""
    tile = pattern.shape[-1]
    reps_h = -(-height // tile)
    reps_w = -(-width // tile)
    return pattern.repeat(1, reps_h, reps_w)[:, :height, :width]


# Three 3×3 convolutions: an output pixel depends on inputs at most 3 px away.
_STRENGTH_HALO = 3
# Above this many pixels, inference computes the strength map in strips (a 2000² radiograph would
# otherwise hold several 16-channel float maps of 256 MB each).
_LARGEST_SINGLE_PASS = 1024 * 1024


class CarrierEncoder(nn.Module):
    """Image (B,1,H,W) in [0,1] and bits (B,N) in {0,1} -> additive residual (B,1,H,W)."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        tile = config.tile
        self.carriers = nn.Parameter(torch.randn(config.n_bits, tile, tile) / tile)
        self.strength = _three_layer_cnn(1, config.strength_channels, 1)
        # Start near a 1 % RMS residual (PSNR ≈ 40 dB): training begins close to the floor.
        self.log_gain = nn.Parameter(torch.tensor(-4.9))

    def message_tile(self, bits: torch.Tensor) -> torch.Tensor:
        """Signed sum of carriers, normalised to unit RMS so that amplitude lives in the strength map."""
        signs = bits.to(self.carriers.dtype) * 2.0 - 1.0
        pattern = torch.einsum("bn,nhw->bhw", signs, self.carriers)
        if self.config.carrier_smoothing > 0:
            # In float32: under bf16 autocast the einsum gives bf16, which cuFFT does not take.
            pattern = self._smooth_cyclically(pattern.float())
        pattern = pattern - pattern.mean(dim=(-2, -1), keepdim=True)
        return pattern / pattern.square().mean(dim=(-2, -1), keepdim=True).clamp_min(1e-12).sqrt()

    def _smooth_cyclically(self, pattern: torch.Tensor) -> torch.Tensor:
        """Gaussian blur with wrap-around, so the repeated tile stays seamless."""
        tile = self.config.tile
        sigma = self.config.carrier_smoothing
        rows = torch.fft.fftfreq(tile, device=pattern.device).view(-1, 1)
        cols = torch.fft.rfftfreq(tile, device=pattern.device).view(1, -1)
        response = torch.exp(-2.0 * (torch.pi * sigma) ** 2 * (rows.square() + cols.square()))
        return torch.fft.irfft2(torch.fft.rfft2(pattern) * response, s=(tile, tile))

    def forward(self, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        standardised = standardise(images)
        if height * width > _LARGEST_SINGLE_PASS and not torch.is_grad_enabled():
            features = self._strength_in_strips(standardised)
        else:
            features = self.strength(standardised)
        strength = F.softplus(features) * self.log_gain.exp()
        carrier = tile_to(self.message_tile(bits), height, width).unsqueeze(1)
        return strength * carrier

    def _strength_in_strips(self, standardised: torch.Tensor, rows: int = 256) -> torch.Tensor:
        """The strength CNN over horizontal strips: the same values as one pass (each output
        pixel sees only _STRENGTH_HALO px around it, so strips overlap by that much), with the
        hidden activations of one strip in memory instead of the whole image's."""
        height = standardised.shape[-2]
        out = torch.empty_like(standardised)
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            low, high = max(0, top - _STRENGTH_HALO), min(height, bottom + _STRENGTH_HALO)
            strip = self.strength(standardised[..., low:high, :])
            out[..., top:bottom, :] = strip[..., top - low : top - low + bottom - top, :]
        return out


class CarrierDecoder(nn.Module):
    """Image (B,1,H,W) -> bit logits (B,N)."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.features = _three_layer_cnn(1, config.decoder_channels, config.decoder_maps)
        self.readout = nn.Linear(config.decoder_maps * config.tile * config.tile, config.n_bits)

    def fold(self, maps: torch.Tensor) -> torch.Tensor:
        """Average all whole tiles of (B,K,H,W) onto one (B,K,T,T)."""
        tile = self.config.tile
        batch, channels, height, width = maps.shape
        rows, cols = height // tile, width // tile
        if rows == 0 or cols == 0:
            raise ValueError(f"image {height}×{width} is smaller than one {tile}×{tile} tile")
        maps = maps[..., : rows * tile, : cols * tile]
        maps = maps.reshape(batch, channels, rows, tile, cols, tile)
        return maps.mean(dim=(2, 4))

    def normalised_fold(self, images: torch.Tensor) -> torch.Tensor:
        folded = self.fold(self.features(standardise(images)))
        # Normalising the fold makes the read-out blind to how strong the mark was and to any
        # global gain applied after embedding (windowing, brightness, contrast).
        folded = folded - folded.mean(dim=(-2, -1), keepdim=True)
        return folded / folded.square().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12).sqrt()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a tile grid anchored at the top-left pixel (as embedded, no crop)."""
        return self.readout(self.normalised_fold(images).flatten(1))

    def logits_for_every_shift(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, T, T): the logits for every cyclic offset of the tile grid.

        A crop moves the grid by (top mod T, left mod T), which rolls the fold cyclically.
        Because the read-out is linear, the logits for all T² rolls are one circular
        cross-correlation of the fold with the read-out weights: a few small FFTs.
        """
        config = self.config
        folded = self.normalised_fold(images)
        weights = self.readout.weight.view(config.n_bits, config.decoder_maps, config.tile, config.tile)
        spectrum = torch.fft.rfft2(folded).unsqueeze(1) * torch.fft.rfft2(weights).conj().unsqueeze(0)
        correlation = torch.fft.irfft2(spectrum.sum(dim=2), s=(config.tile, config.tile))
        return correlation + self.readout.bias.view(1, -1, 1, 1)


class WatermarkModel(nn.Module):
    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = CarrierEncoder(config)
        self.decoder = CarrierDecoder(config)


def project_to_psnr(residual: torch.Tensor, psnr_db: float) -> torch.Tensor:
    """Rescale each image's residual so that its PSNR (peak 1) is at least `psnr_db`.

    A residual whose mean square exceeds 10^(-psnr/10) is multiplied by the factor that brings
    it exactly onto that bound; others pass unchanged. Clipping the marked image to [0, 1] only
    moves pixels towards the original, so the marked image keeps the bound too. The factor is
    part of the graph: the encoder learns under the projection, as it will be used.
    """
    target = 10.0 ** (-psnr_db / 10.0)
    mean_square = residual.float().square().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-20)
    return residual * torch.clamp(torch.sqrt(target / mean_square), max=1.0).to(residual.dtype)


class TrainingPass(nn.Module):
    """One training forward pass as one module (what data-parallel training wraps): embed,
    optionally project onto the PSNR floor, clip to the valid range, attack, decode."""

    def __init__(self, model: WatermarkModel, projection_psnr: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.projection_psnr = projection_psnr

    def embed(self, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        # The residual is added in float32: at bf16 precision a 1 % residual on a 0.5 pixel
        # would be rounded to a few levels.
        residual = self.model.encoder(images, bits).float()
        if self.projection_psnr is not None:
            residual = project_to_psnr(residual, self.projection_psnr)
        return (images.float() + residual).clamp(0.0, 1.0)

    def forward(self, images: torch.Tensor, bits: torch.Tensor, attack, rng) -> tuple[torch.Tensor, torch.Tensor]:
        marked = self.embed(images, bits)
        logits = self.model.decoder(attack(marked, rng)).float()
        return marked, logits
