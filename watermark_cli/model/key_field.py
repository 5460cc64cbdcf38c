"""The key field: a secret, smooth, random ±-pattern over the image that a keyed mark is multiplied by.

Why (design §7): an unkeyed carrier mark is one tile repeated, so anyone can read it with the
public model, or average the image over the tile period to estimate the mark and subtract it.
A keyed model multiplies the repeated message tile by this field before adding it. The field
is different at every pixel of the image and known only to holders of the key, so

- the public decoder without the key folds noise: the tiles no longer agree with each other;
- folding over the tile period averages the mark away instead of estimating it;
- with the key, the decoder multiplies its feature maps by the same field before folding
  (`CarrierDecoder.normalised_fold`), which turns the mark back into the repeated tile.

The field is white ±1 noise drawn from SHAKE-256 of a key-derived seed (`payload.field_seed`),
one XOF stream per row (so a pixel's value does not depend on how much of the canvas is
drawn), smoothed by a Gaussian
of `sigma` px (JPEG and resizing keep low frequencies) and scaled to unit variance. It is
anchored at the image's top-left pixel; reading a crop looks for where the crop sat
(`marking.synchronisation.locate_key_field`).

Training draws a fresh random field per image (`random_key_fields`): one model serves every key.
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading

import numpy as np


def smoothing_kernel(sigma: float) -> np.ndarray:
    """The 1-D Gaussian (radius 3 sigma, sum 1) the field is smoothed with, in both directions."""
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def field_scale(sigma: float) -> float:
    """What smoothed ±1 white noise is divided by to have unit variance: Σk² per direction."""
    return float(np.square(smoothing_kernel(sigma)).sum())


def _white_rows(seed: bytes, first_row: int, rows: int, cols: int) -> np.ndarray:
    """±1 white noise, rows [first_row, first_row + rows) and cols [0, cols) of the canvas."""
    row_bytes = -(-cols // 8)
    out = np.empty((rows, row_bytes), dtype=np.uint8)
    for index in range(rows):
        stream = hashlib.shake_256(seed + (first_row + index).to_bytes(8, "big"))
        out[index] = np.frombuffer(stream.digest(row_bytes), dtype=np.uint8)
    bits = np.unpackbits(out, axis=1)[:, :cols]
    return bits.astype(np.float32) * 2.0 - 1.0


def key_field(seed: bytes, rows: int, cols: int, sigma: float, top: int = 0, left: int = 0) -> np.ndarray:
    """The field over canvas rows [top, top + rows) and cols [left, left + cols), float32
    (read-only).

    The same pixel has the same value whatever region is asked for: the white noise is drawn
    from row `top − radius` on (rows above 0 are mirrored, as the smoothing's edge), and the
    smoothing only reaches `radius` px. So a region is cut from a canvas drawn once per key
    (`_CANVASES`): a read asks for the field at a dozen offsets and scales, a batch for every file."""
    bottom, right = top + rows, left + cols
    if bottom * right > _CANVAS_MOST_PIXELS:
        field = _drawn_field(seed, rows, cols, sigma, top, left)
        field.flags.writeable = False
        return field
    with _CANVAS_LOCK:
        key = (bytes(seed), float(sigma))
        canvas = _CANVASES.pop(key, None)
        if canvas is None or canvas.shape[0] < bottom or canvas.shape[1] < right:
            size = [max(-(-needed // _CANVAS_STEP) * _CANVAS_STEP, have)
                    for needed, have in zip((bottom, right), canvas.shape if canvas is not None else (0, 0))]
            canvas = _drawn_field(seed, size[0], size[1], sigma)
            canvas.flags.writeable = False
        _CANVASES[key] = canvas  # the most recently used last
        while len(_CANVASES) > _CANVASES_KEPT:
            _CANVASES.pop(next(iter(_CANVASES)))
    return canvas[top:bottom, left:right]


# Canvases are drawn in steps of this many px a side, for a few keys, and up to this size (a
# 4096² canvas is 64 MiB); a larger region is drawn on its own.
_CANVAS_STEP = 256
_CANVASES_KEPT = 4
_CANVAS_MOST_PIXELS = 4096 * 4096
_CANVASES: dict[tuple[bytes, float], np.ndarray] = {}
_CANVAS_LOCK = threading.Lock()


def _drawn_field(seed: bytes, rows: int, cols: int, sigma: float, top: int = 0, left: int = 0) -> np.ndarray:
    """`key_field`'s region drawn from the key's white noise (see there)."""
    from scipy.ndimage import convolve1d

    kernel = smoothing_kernel(sigma)
    radius = len(kernel) // 2
    first = top - radius
    # Canvas rows and cols below 0 mirror rows and cols 0, 1, ...: a fixed edge, whatever is asked.
    row_index = np.abs(np.arange(first, top + rows + radius)) - (np.arange(first, top + rows + radius) < 0)
    col_index = np.abs(np.arange(left - radius, left + cols + radius)) - (np.arange(left - radius, left + cols + radius) < 0)
    low_row, high_row = int(row_index.min()), int(row_index.max()) + 1
    white = _white_rows(seed, low_row, high_row - low_row, int(col_index.max()) + 1)
    white = white[row_index - low_row][:, col_index]
    smooth = convolve1d(convolve1d(white, kernel, axis=0, mode="constant"), kernel, axis=1, mode="constant")
    return (smooth[radius: radius + rows, radius: radius + cols] / field_scale(sigma)).astype(np.float32)


def random_key_fields(batch: int, rows: int, cols: int, sigma: float, like, generator=None):
    """(batch, 1, rows, cols) fields of fresh random keys for training, on `like`'s device: the
    same construction as `key_field` (±1 white noise, the same kernel, the same scale).
    A seeded `generator` gives fixed fields (validation)."""
    import torch
    import torch.nn.functional as F

    kernel = torch.as_tensor(smoothing_kernel(sigma), dtype=torch.float32, device=like.device)
    radius = len(kernel) // 2
    white = torch.randint(0, 2, (batch, 1, rows + 2 * radius, cols + 2 * radius), device=like.device,
                          generator=generator)
    white = white.to(torch.float32) * 2.0 - 1.0
    smooth = F.conv2d(white, kernel.view(1, 1, -1, 1))
    smooth = F.conv2d(smooth, kernel.view(1, 1, 1, -1))
    return smooth / field_scale(sigma)


# ---- binding to the host ------------------------------------------------------------------------
# A mark copied onto another image (estimated from a marked one, or its exact residual) must not
# read there. So the field a mark is made with also depends on its host: it is multiplied by the
# signs of the host filtered by a secret, key-derived band-pass kernel. On the marked image (and
# its exports, crops, resizes) those signs come out the same almost everywhere; on another image
# they agree with the victim's at chance, and the copied mark demodulates to noise. Without the
# key the kernel is unknown, so a copier cannot turn the signs of one host into another's.

_HOST_RADIUS = 12
_HOST_SMOOTHING = 2.0
_HOST_WINDOW = 5.0


def host_kernel(seed: bytes) -> np.ndarray:
    """The secret band-pass kernel ((2r+1)², zero sum): smoothed key-derived white noise under
    a Gaussian window, its mean taken out under the window so that no level or gain matters."""
    from scipy.ndimage import gaussian_filter

    size = 2 * _HOST_RADIUS + 1
    white = _white_rows(hashlib.sha256(seed + b"host kernel").digest(), 0, size, size).astype(np.float64)
    smooth = gaussian_filter(white, _HOST_SMOOTHING, mode="wrap")
    offsets = np.arange(-_HOST_RADIUS, _HOST_RADIUS + 1, dtype=np.float64)
    window = np.exp(-0.5 * (offsets[:, None] ** 2 + offsets[None, :] ** 2) / _HOST_WINDOW**2)
    kernel = smooth * window
    kernel -= window * (kernel.sum() / window.sum())
    return kernel / np.sqrt(np.square(kernel).sum())


def host_signs(seed: bytes, frame: np.ndarray, threshold: float) -> np.ndarray:
    """±1 per pixel: the sign of `frame` filtered by the secret kernel (`host_band`), where that
    filtered value exceeds `threshold` in size; 0 elsewhere (no mark there).

    Why the threshold: where the host has little content of its own (air around a CT, the black
    around an NM scan), a pasted pattern would own the sign, and with it the victim's mark
    would read. The caller sets it above what a paste at the floor could produce
    (`marking.image.sign_thresholds`)."""
    return signs_above(host_band(seed, frame), threshold)


def signs_above(band: np.ndarray, threshold: float) -> np.ndarray:
    """`host_signs` of a frame whose `host_band` is `band`."""
    return np.where(np.abs(band) > threshold, np.sign(band), 0.0).astype(np.float32)


def host_band(seed: bytes, frame: np.ndarray) -> np.ndarray:
    """`frame` filtered by the secret band-pass kernel (float32, the frame's shape and units).
    The frame's edges are mirrored, so a crop gives the same values as the whole image except
    within the kernel's radius of its edges."""
    from scipy import fft

    # In float32, the transforms take half the time: a sign can then differ from float64's only
    # where the filtered value is within float32's rounding of the threshold, and either sign
    # is as good there. The kernel sums to 0, so the frame's level is taken out first (exactly:
    # the mirrored padding moves with it), and float32 spends its precision on the content.
    frame = np.asarray(frame, dtype=np.float64)
    level = float(frame.mean()) if frame.size else 0.0
    padded = np.pad((frame - level).astype(np.float32), _HOST_RADIUS, mode="symmetric")
    # A circular convolution at a fast size at least the padded frame's: the outputs that see
    # no padding beyond the frame's mirror (the 'valid' ones) never wrap round.
    shape = tuple(fft.next_fast_len(side, real=True) for side in padded.shape)
    spectrum = fft.rfft2(padded, s=shape)
    spectrum *= _host_kernel_spectrum(bytes(seed), shape)
    reach = 2 * _HOST_RADIUS
    return fft.irfft2(spectrum, s=shape)[reach : reach + frame.shape[0], reach : reach + frame.shape[1]]


# Kernel spectra kept per (key, size) up to this many bytes each: every frame of a batch of CTs
# has the same size (a 512² frame's is 1.2 MB; computing it took a third of `host_signs`).
_CACHED_SPECTRUM_BYTES = 4 << 20


def _host_kernel_spectrum(seed: bytes, shape: tuple[int, int]) -> np.ndarray:
    if shape[0] * (shape[1] // 2 + 1) * 8 > _CACHED_SPECTRUM_BYTES:
        return _kernel_spectrum(seed, shape)
    return _cached_kernel_spectrum(seed, shape)


def _kernel_spectrum(seed: bytes, shape: tuple[int, int]) -> np.ndarray:
    from scipy import fft

    return fft.rfft2(host_kernel(seed).astype(np.float32), s=shape)


@functools.lru_cache(maxsize=8)
def _cached_kernel_spectrum(seed: bytes, shape: tuple[int, int]) -> np.ndarray:
    spectrum = _kernel_spectrum(seed, shape)
    spectrum.flags.writeable = False
    return spectrum


def sync_pilot_tile(tile: int, sigma: float) -> np.ndarray:
    """The public synchronisation pilot of keyed models: one fixed smooth random `tile`² pattern
    (zero mean, unit RMS, seamless when repeated), the same for every key and every image.

    A keyed mark repeats nowhere, so the period (a resize) and the lattice angle (a rotation)
    that extraction reads from the image's autocorrelation would be lost with it; this
    repeated pattern keeps them, and carries nothing else. It reveals that an image holds a wm
    mark and where its tile grid lies; anyone can estimate and subtract it (it is public), which
    leaves the payload in place but stops a later resize or rotation from being undone."""
    from scipy.ndimage import gaussian_filter

    white = _white_rows(hashlib.sha256(b"wm-sync-pilot-v1").digest(), 0, tile, tile).astype(np.float64)
    smooth = gaussian_filter(white, sigma, mode="wrap")
    smooth -= smooth.mean()
    return (smooth / np.sqrt(np.square(smooth).mean())).astype(np.float32)

