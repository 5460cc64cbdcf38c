"""Encoder and decoder: learned per-bit carrier tiles, content-adaptive strength, folding decoder.

Why this design (design notes §3): HiDDeN-style broadcast-and-concatenate message injection
learns too slowly on a CPU. Here each raw bit owns a learned `tile × tile` carrier pattern. The
message picks signs (+1 for a one, -1 for a zero), the signed carriers are summed into one tile,
the tile is repeated over the whole image, and a small CNN decides how strongly each pixel may
carry it (more in texture, less in flat regions). The decoder suppresses the anatomy with a small
CNN, folds the feature map (adds every pixel onto its place in one tile) and reads the bits with
a linear layer. Folding means that a 512² CT averages 256 copies of the tile: the signal grows
with the image while the anatomy, which is not periodic, averages away.

Both networks are fully convolutional up to the fold, so any image of at least one tile (and at
least 64 px, the tool's minimum) works, square or not. Tiles are anchored at the top-left pixel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .key_field import random_key_fields, sync_pilot_tile


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
    # Keyed models (model/key_field.py): the smoothing (px) of the secret key field the repeated
    # tile is multiplied by; 0 is an unkeyed model (wm-default-v2 and earlier). `pilot` is a
    # constant added to the unit-RMS message tile before that product: under the field it is a
    # secret pattern with no payload, which a reader with the key finds a crop's position by.
    key_field_sigma: float = 0.0
    pilot: float = 0.0
    # Keyed models: the amplitude of the public repeated pattern (`key_field.sync_pilot_tile`,
    # relative to the unit-RMS message tile) that resizes and rotations are found by.
    sync_pilot: float = 0.0

    @property
    def keyed(self) -> bool:
        return self.key_field_sigma > 0

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


def tile_mean(maps: torch.Tensor, tile: int) -> torch.Tensor:
    """(..., H, W) → (..., tile, tile): the mean of all whole tiles (the fold). Summed over a
    block of tile rows at a time, then over the tiles of a row: torch's mean over the two
    tile dimensions at once (not adjacent in memory) took five times as long, and a reader's
    pilot scans fold some 200 sampled maps."""
    *lead, height, width = maps.shape
    rows, cols = height // tile, width // tile
    whole = maps[..., : rows * tile, : cols * tile].reshape(-1, rows, tile, cols * tile).sum(dim=1)
    whole = whole.reshape(-1, tile, cols, tile).sum(dim=2)
    return (whole / (rows * cols)).reshape(*lead, tile, tile)


def tile_to(pattern: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Repeat (B, T, T) tiles to cover (B, height, width), anchored at the top-left pixel."""
    tile = pattern.shape[-1]
    reps_h = -(-height // tile)
    reps_w = -(-width // tile)
    return pattern.repeat(1, reps_h, reps_w)[:, :height, :width]


# Three 3×3 convolutions: an output pixel depends on inputs at most 3 px away.
_HALO = 3
# Above this many pixels, inference on a GPU runs in strips (a 2000² radiograph would otherwise
# hold several 16-channel float maps of 256 MB each).
_LARGEST_SINGLE_PASS = 1024 * 1024
_GPU_STRIP_ROWS = 256
# On a CPU, strips of about this many pixels: 16 channels of 64 rows of a 512-px-wide frame stay
# in the cache from one convolution to the next, where a whole-frame pass goes out to memory
# after each (a 512² CT's decoder features: 28 ms instead of 42 on one core, the same values).
_CPU_STRIP_PIXELS = 64 * 512
_CPU_FEWEST_ROWS = 16


def run_in_strips(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """`network(images)` for a three-layer 3×3 CNN (`_three_layer_cnn`), computed over
    horizontal strips where that is faster or smaller: without gradients, on a CPU always (one
    image at a time, strips that stay in the cache), on a GPU above `_LARGEST_SINGLE_PASS`
    pixels. Each output pixel sees only `_HALO` px around it, so strips overlapping by that
    much give the same values as one pass; training (gradients) always takes one pass."""
    height, width = images.shape[-2:]
    if torch.is_grad_enabled():
        return network(images)
    if images.device.type == "cpu":
        rows = max(_CPU_FEWEST_ROWS, _CPU_STRIP_PIXELS // max(width, 1))
    elif height * width > _LARGEST_SINGLE_PASS:
        rows = _GPU_STRIP_ROWS
    else:
        return network(images)
    if rows >= height:
        return _strip_pass(network, images, {}) if images.device.type == "cpu" else network(images)
    by_image = images.device.type == "cpu"
    out, scratch = None, {}
    for first in range(len(images)) if by_image else (None,):
        batch = images[first : first + 1] if by_image else images
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            low, high = max(0, top - _HALO), min(height, bottom + _HALO)
            strip = _strip_pass(network, batch[..., low:high, :], scratch)
            if out is None:
                out = strip.new_empty((len(images), strip.shape[1], height, width))
            target = out[first : first + 1] if by_image else out
            target[..., top:bottom, :] = strip[..., top - low : top - low + bottom - top, :]
    return out


def _strip_pass(network: nn.Module, images: torch.Tensor, scratch: dict) -> torch.Tensor:
    """`network(images)` layer by layer; on a CPU, a last convolution to few maps by
    `_few_maps_convolution` (`scratch`: its work buffers, kept from strip to strip)."""
    *layers, last = network
    for layer in layers:
        images = layer(images)
    if images.device.type == "cpu" and _is_few_maps_convolution(last):
        return _few_maps_convolution(last, images, scratch)
    return last(images)


def _is_few_maps_convolution(layer: nn.Module) -> bool:
    return (isinstance(layer, nn.Conv2d) and layer.kernel_size == (3, 3) and layer.padding == (1, 1)
            and layer.padding_mode == "reflect" and layer.stride == (1, 1) and layer.dilation == (1, 1)
            and layer.groups == 1 and layer.bias is not None and 4 * layer.out_channels <= layer.in_channels)


def _few_maps_convolution(conv: nn.Conv2d, images: torch.Tensor, scratch: dict) -> torch.Tensor:
    """A reflect-padded 3×3 convolution to few output maps (the networks' last layers: 16 maps
    in, 1 or 2 out), the same values as `conv(images)` to float rounding. The CPU's convolution
    library takes as long for 2 output maps as for 16. Here one matrix product gives every
    output map's nine taps at every padded pixel, and each output is nine contiguous slices of
    those added up (the tap at (dy, dx) is a shift of dy·width + dx in the flattened padded
    strip): a 512² frame's decoder features in 22 ms instead of 26, the encoder's strength map
    in 20 instead of 26 (one core)."""
    weight = conv.weight
    maps, channels = weight.shape[:2]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    count, _, height, width = padded.shape
    taps = weight.permute(0, 2, 3, 1).reshape(maps * 9, channels)  # rows: (map, dy, dx)
    shape = (maps * 9, height * width)
    if scratch.get("products") is None or scratch["products"].shape != shape:
        scratch["products"] = images.new_empty(shape)  # one per strip height, not one per strip
    products = scratch["products"]
    rows = height - 2
    span = rows * width - 2  # the last row's two padding columns are never read
    out = images.new_empty((count, maps, rows * width))
    out[..., span:] = 0
    for image in range(count):
        torch.mm(taps, padded[image].reshape(channels, height * width), out=products)
        for index in range(maps):
            total, first = out[image, index, :span], index * 9
            torch.add(products[first, :span], products[first + 1, 1 : 1 + span], out=total)
            for tap in range(2, 9):
                shift = (tap // 3) * width + tap % 3
                total += products[first + tap, shift : shift + span]
    return out.view(count, maps, rows, width)[..., : width - 2] + conv.bias.view(1, maps, 1, 1)


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
        if config.keyed and config.sync_pilot > 0:
            pilot = torch.from_numpy(sync_pilot_tile(tile, max(config.carrier_smoothing, 1.0)))
            self.register_buffer("sync_pilot", pilot, persistent=False)  # derived, not a weight

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

    def forward(self, images: torch.Tensor, bits: torch.Tensor, key_field: torch.Tensor | None = None) -> torch.Tensor:
        """The residual; a keyed model needs the key field (B or 1, 1, H, W) of the image."""
        height, width = images.shape[-2:]
        standardised = standardise(images)
        features = run_in_strips(self.strength, standardised)
        strength = F.softplus(features) * self.log_gain.exp()
        carrier = tile_to(self.message_tile(bits), height, width).unsqueeze(1)
        if self.config.keyed:
            field = _require_field(key_field, images)
            carrier = field * (carrier + self.config.pilot)
            if self.config.sync_pilot > 0:
                repeated = tile_to(self.sync_pilot.unsqueeze(0), height, width).unsqueeze(1).to(carrier.dtype)
                # Only where the field carries the mark (a field bound to its host is 0 where the
                # host owns no sign): elsewhere the pilot would spend the budget alone.
                carrier = carrier + self.config.sync_pilot * repeated * (field != 0).to(carrier.dtype)
        return strength * carrier


class CarrierDecoder(nn.Module):
    """Image (B,1,H,W) -> bit logits (B,N)."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.features = _three_layer_cnn(1, config.decoder_channels, config.decoder_maps)
        self.readout = nn.Linear(config.decoder_maps * config.tile * config.tile, config.n_bits)

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W): what the read-out folds, before the key field (`run_in_strips`)."""
        return run_in_strips(self.features, standardise(images))

    def fold(self, maps: torch.Tensor) -> torch.Tensor:
        """(B,K,H,W) → (B,K,T,T): every pixel added onto its place in the tile, the sums divided
        by the mean count; for whole tiles alone, their mean.

        Why every pixel and not the whole tiles alone: a frame that is not a whole number of
        tiles (a 96² or 160² frame, a crop) carries the mark in its part tiles too, and the
        whole tiles of a 96² frame are 44 % of it. A place's sum over n pixels holds n times
        the mark and √n times the host's noise, so the sum, not its mean, is what a linear
        read-out should weigh (a matched filter); divided by the mean count it is the mean of
        whole tiles wherever all counts are equal. Textured cuts of the training split's files
        (`benchmarks/small_frames.py --split train --seed 5`, fitted marks): 160² frames read
        back 60 of 64 rather than 54, 96² 60 of 72 rather than 59 (JPEG q80 39 rather than 33)."""
        tile = self.config.tile
        height, width = maps.shape[-2:]
        if height < tile or width < tile:
            raise ValueError(f"image {height}×{width} is smaller than one {tile}×{tile} tile")
        if height % tile == 0 and width % tile == 0:
            return tile_mean(maps, tile)
        # Padded with zeros (they add nothing) to whole tiles, whose mean is the sums over the
        # padded tiles' count; the mean count of a place is the frame's area over the tile's.
        padded = F.pad(maps, (0, -width % tile, 0, -height % tile))
        return tile_mean(padded, tile) * (padded.shape[-2] * padded.shape[-1] / (height * width))

    def normalised_fold(self, images: torch.Tensor, key_field: torch.Tensor | None = None) -> torch.Tensor:
        return self.fold_features(self.feature_maps(images), key_field)

    def fold_features(self, features: torch.Tensor, key_field: torch.Tensor | None = None) -> torch.Tensor:
        """`normalised_fold` from feature maps already computed (a reader trying several crop
        offsets computes them once)."""
        if self.config.keyed:
            # Multiplying by the key field again undoes the embedder's product (the field is
            # ±-valued with unit variance): the mark becomes the repeated tile and folds; the
            # anatomy becomes field-modulated noise and folds away.
            features = features * _require_field(key_field, features)
        folded = self.fold(features)
        # Normalising the fold makes the read-out blind to how strong the mark was and to any
        # global gain applied after embedding (windowing, brightness, contrast).
        folded = folded - folded.mean(dim=(-2, -1), keepdim=True)
        return folded / folded.square().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12).sqrt()

    def forward(self, images: torch.Tensor, key_field: torch.Tensor | None = None,
                grid_offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """Logits for a tile grid anchored at the top-left pixel (as embedded, no crop), or, for
        an image cut from the marked one at `grid_offset` (rows, cols), anchored there."""
        return self.logits_from_features(self.feature_maps(images), key_field, grid_offset)

    def logits_from_features(self, features: torch.Tensor, key_field: torch.Tensor | None = None,
                             grid_offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
        folded = self.fold_features(features, key_field)
        tile = self.config.tile
        if grid_offset != (0, 0):
            folded = torch.roll(folded, shifts=(grid_offset[0] % tile, grid_offset[1] % tile), dims=(-2, -1))
        return self.readout(folded.flatten(1))

    def logits_for_every_shift(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, T, T): the logits for every cyclic offset of the tile grid.

        A crop moves the grid by (top mod T, left mod T), which rolls the fold cyclically.
        Because the read-out is linear, the logits for all T² rolls are one circular
        cross-correlation of the fold with the read-out weights: a few small FFTs.
        """
        config = self.config
        if config.keyed:
            raise ValueError("a keyed model's crop offset is found with the key (locate_key_field), not by rolling")
        folded = self.normalised_fold(images)
        weights = self.readout.weight.view(config.n_bits, config.decoder_maps, config.tile, config.tile)
        spectrum = torch.fft.rfft2(folded).unsqueeze(1) * torch.fft.rfft2(weights).conj().unsqueeze(0)
        correlation = torch.fft.irfft2(spectrum.sum(dim=2), s=(config.tile, config.tile))
        return correlation + self.readout.bias.view(1, -1, 1, 1)


def _require_field(key_field: torch.Tensor | None, images: torch.Tensor) -> torch.Tensor:
    if key_field is None:
        raise ValueError("a keyed model needs the key field of the image")
    if key_field.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"key field {tuple(key_field.shape[-2:])} does not cover the image {tuple(images.shape[-2:])}")
    return key_field.to(images.dtype)


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

    def key_fields(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """Fresh random key fields, one per image (None for an unkeyed model): training over
        random keys makes one model serve every key. A seeded `generator` gives fixed ones."""
        if not self.model.config.keyed:
            return None
        return random_key_fields(images.shape[0], *images.shape[-2:], self.model.config.key_field_sigma, images,
                                 generator)

    def embed(self, images: torch.Tensor, bits: torch.Tensor, key_field: torch.Tensor | None = None) -> torch.Tensor:
        # The residual is added in float32: at bf16 precision a 1 % residual on a 0.5 pixel
        # would be rounded to a few levels.
        residual = self.model.encoder(images, bits, key_field).float()
        if self.projection_psnr is not None:
            residual = project_to_psnr(residual, self.projection_psnr)
        return (images.float() + residual).clamp(0.0, 1.0)

    def forward(self, images: torch.Tensor, bits: torch.Tensor, attack, rng) -> tuple[torch.Tensor, torch.Tensor]:
        key_field = self.key_fields(images)
        marked = self.embed(images, bits, key_field)
        logits = self.model.decoder(attack(marked, rng), key_field).float()
        return marked, logits
