"""Built-in synthetic dataset: CT-, MR- and radiograph-like images, with and without lesions.

Nothing can be downloaded where ``wm`` is developed and tested, and real clinical images are few,
so demos, quick training runs and tests draw on these phantoms. They are not meant to fool a
radiologist; they are meant to have what matters to a watermark and to a diagnostic classifier:

- the intensity statistics of each modality (CT: large areas of air at the bottom of the range
  and dense bone at the top; MR: no true zeros, a smooth bias field, Rician noise; radiograph:
  smooth gradients over the whole field, nothing at zero),
- anatomy-like structure with sharp tissue edges and flat regions (where a residual is most
  visible), and
- optional lesions: a small (3-8 % of the image width) blurred nodule whose contrast is 5-15 %
  of the tissue it sits in, placed inside the anatomy, to measure whether a watermark changes a
  classifier's answer.

Every random draw happens whether or not a lesion is requested, so an image with a lesion and
one without, made from the same seed, differ only around the lesion.

Intensities are floats in [0, 1]: CT maps -1000..+2000 HU linearly; MR is T1-weighted-like; the
radiograph is displayed with dense structures bright.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import BadInputError
from ..io.writing import csv_text, png_bytes, write_atomically


KINDS = ("ct", "mr", "xray")

_FORMATS = {"png": ".png", "tiff": ".tif", "tif": ".tif"}
_MIN_SIDE = 32  # below this the anatomy is a few pixels; the dataset writer asks for >= 64


def _hu(value: float) -> float:
    """CT number (HU) to the [0, 1] scale used here (-1000 HU -> 0, +2000 HU -> 1)."""
    return (value + 1000.0) / 3000.0


# -- geometry helpers ----------------------------------------------------------------------------


class _Grid:
    """Pixel-centre coordinates scaled so that the image width spans [-1, 1] (y points down)."""

    def __init__(self, shape: tuple[int, int]):
        h, w = shape
        half = w / 2.0
        self.shape = (h, w)
        self.pixel = 1.0 / half  # one pixel in grid units
        self.y = ((np.arange(h, dtype=np.float32) - (h - 1) / 2.0) / half)[:, None]
        self.x = ((np.arange(w, dtype=np.float32) - (w - 1) / 2.0) / half)[None, :]

    def rho2(self, cy, cx, ry, rx, angle=0.0, window=(slice(None), slice(None))) -> np.ndarray:
        """Squared elliptical radius: < 1 inside the ellipse, 1 on its edge (over ``window``)."""
        dy = self.y[window[0]] - np.float32(cy)
        dx = self.x[:, window[1]] - np.float32(cx)
        if angle:
            c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
            dx, dy = c * dx + s * dy, c * dy - s * dx
        return (dx / np.float32(rx)) ** 2 + (dy / np.float32(ry)) ** 2

    def _bounding_window(self, cy, cx, ry, rx, angle) -> tuple[slice, slice]:
        """Pixel rows and columns that can hold the ellipse: small shapes cost little."""
        half_w = np.hypot(rx * np.cos(angle), ry * np.sin(angle))
        half_h = np.hypot(rx * np.sin(angle), ry * np.cos(angle))
        h, w = self.shape

        def span(centre, half, n):
            scale = 1.0 / self.pixel
            lo = int(np.floor((centre - half) * scale + (n - 1) / 2.0)) - 1
            hi = int(np.ceil((centre + half) * scale + (n - 1) / 2.0)) + 2
            return slice(min(max(lo, 0), n), min(max(hi, 0), n))

        return span(cy, half_h, h), span(cx, half_w, w)

    def ellipse(self, cy, cx, ry, rx, angle=0.0) -> np.ndarray:
        window = self._bounding_window(cy, cx, ry, rx, angle)
        mask = np.zeros(self.shape, dtype=bool)
        mask[window] = self.rho2(cy, cx, ry, rx, angle, window) <= 1.0
        return mask

    def dome(self, cy, cx, ry, rx, angle=0.0, power=0.5) -> np.ndarray:
        """Projected thickness of an ellipsoid: 1 at the centre, falling smoothly to 0 at the edge."""
        window = self._bounding_window(cy, cx, ry, rx, angle)
        out = np.zeros(self.shape, dtype=np.float32)
        local = np.clip(1.0 - self.rho2(cy, cx, ry, rx, angle, window), 0.0, 1.0)
        out[window] = local ** np.float32(power)
        return out


@functools.lru_cache(maxsize=32)
def _bump_matrix(n_pixels: int, n_nodes: int) -> np.ndarray:
    """Weights of Gaussian bumps centred on ``n_nodes`` evenly spaced nodes, at each pixel."""
    spacing = 1.0 / (n_nodes - 3)
    nodes = (np.arange(n_nodes) - 1.0) * spacing  # one node beyond each edge
    pos = (np.arange(n_pixels) + 0.5) / n_pixels
    weights = np.exp(-0.5 * ((pos[:, None] - nodes[None, :]) / (0.6 * spacing)) ** 2)
    return weights.astype(np.float32)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth random field with about ``cells`` bumps across the width; zero mean, unit std.

    A sum of Gaussian bumps with random weights, computed as two small matrix products: much
    cheaper than filtering full-resolution noise, and it is what gives tissue its slow texture.
    """
    h, w = shape
    cells_y = max(1, round(cells * h / w))
    weights = rng.standard_normal((cells_y + 3, cells + 3)).astype(np.float32)
    field = _bump_matrix(h, cells_y + 3) @ weights @ _bump_matrix(w, cells + 3).T
    field -= field.mean()
    return field / np.float32(field.std() + 1e-6)


def _blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Partial-volume / detector unsharpness."""
    return ndimage.gaussian_filter(image, sigma_px, mode="nearest", truncate=3.0)


# -- lesions ----------------------------------------------------------------------------------


class _Nodule:
    """A lesion's parameters. Drawn for every image so that the random stream never depends on
    whether the lesion is then added."""

    def __init__(self, rng: np.random.Generator, sign_choices: tuple[int, ...],
                 contrast_range: tuple[float, float] = (0.05, 0.15)):
        self.where = rng.random()
        self.diameter_fraction = rng.uniform(0.03, 0.08)
        self.contrast = rng.uniform(*contrast_range)
        self.sign = sign_choices[int(rng.integers(len(sign_choices)))]
        self.lobulation = rng.uniform(0.0, 0.12, size=2)
        self.phases = rng.uniform(0.0, 2 * np.pi, size=2)

    def add_to(self, image: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Add the nodule, centred on one of the ``candidates`` pixels, to a noise-free image.

        Contrast is relative to the mean tissue value under the nodule. The profile is a smooth
        step with compact support (flat core, blurred rim), so pixels farther than about 0.8
        diameters from the centre are untouched.
        """
        h, w = image.shape
        radius = 0.5 * self.diameter_fraction * w
        outer_factor = 1.3 * (1.0 + self.lobulation.sum())
        reach = int(np.ceil(radius * outer_factor)) + 1
        # Keep the whole footprint inside the image.
        inner = np.zeros_like(candidates)
        if h > 2 * reach and w > 2 * reach:
            inner[reach : h - reach, reach : w - reach] = candidates[reach : h - reach, reach : w - reach]
        flat = np.flatnonzero(inner)
        if flat.size:
            cy, cx = divmod(int(flat[min(int(self.where * flat.size), flat.size - 1)]), w)
        else:
            cy, cx = h // 2, w // 2
        y0, y1 = max(cy - reach, 0), min(cy + reach + 1, h)
        x0, x1 = max(cx - reach, 0), min(cx + reach + 1, w)
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        r = np.sqrt(dy**2 + dx**2)
        theta = np.arctan2(dy, dx)
        edge = radius * (
            1.0
            + self.lobulation[0] * np.sin(3 * theta + self.phases[0])
            + self.lobulation[1] * np.sin(5 * theta + self.phases[1])
        )
        t = np.clip((1.3 * edge - r) / (0.7 * edge), 0.0, 1.0)  # 1 inside 0.6 edge, 0 beyond 1.3 edge
        profile = t * t * (3.0 - 2.0 * t)
        patch = image[y0:y1, x0:x1]
        tissue = float(np.sum(patch * profile) / max(float(np.sum(profile)), 1e-6))
        out = image.copy()
        out[y0:y1, x0:x1] = patch + np.float32(self.sign * self.contrast * tissue) * profile
        return out


def add_nodule(
    image: np.ndarray,
    candidates: np.ndarray,
    rng: np.random.Generator,
    sign_choices: tuple[int, ...] = (-1, 1),
    contrast_range: tuple[float, float] = (0.05, 0.15),
) -> np.ndarray:
    """The phantoms' blurred nodule, centred on one of the ``candidates`` pixels of any image.

    Used to place the same synthetic lesion on real backgrounds (`data.lesions`). Its
    contrast is relative to the mean value under it, as in the phantoms. It takes a fixed number
    of draws from ``rng``, so what the caller draws next does not depend on the image.
    """
    return _Nodule(rng, sign_choices, contrast_range).add_to(image, candidates)


# -- modalities -------------------------------------------------------------------------------


def _ct(grid: _Grid, rng: np.random.Generator, lesion: bool) -> np.ndarray:
    """Axial abdominal CT at liver/kidney level: fat, muscle wall, organs, spine, ribs, table."""
    g, u = grid, rng.uniform
    cy, cx = u(-0.06, 0.06), u(-0.05, 0.05)
    ry, rx = u(0.52, 0.66), u(0.78, 0.9)
    fat = u(0.04, 0.12)  # subcutaneous fat thickness
    wall = u(0.04, 0.07)  # abdominal muscle wall
    img = np.full(g.shape, _hu(-1000), dtype=np.float32)

    # Patient table below the body (carbon fibre, a little denser than fat).
    table_top = cy + ry + u(0.02, 0.06)
    img[(g.y >= table_top) & (g.y <= table_top + 0.05) & (np.abs(g.x) < 0.95)] = _hu(-250)

    body = g.ellipse(cy, cx, ry, rx)
    img[body] = _hu(u(-110, -90))  # subcutaneous fat
    img[g.ellipse(cy, cx, ry - fat, rx - fat)] = _hu(u(40, 60))  # muscle wall
    cavity = g.ellipse(cy, cx, ry - fat - wall, rx - fat - wall)
    img[cavity] = _hu(u(-100, -70))  # intra-abdominal fat

    # "Bone ring": rib cross-sections just inside the muscle wall, absent anteriorly.
    rib_ring = g.rho2(cy, cx, ry - fat - 0.5 * wall, rx - fat - 0.5 * wall)
    angle = np.arctan2((g.y - cy) / ry, (g.x - cx) / rx)
    n_ribs = int(rng.integers(9, 14))
    rib_phase = u(0, 2 * np.pi)
    on_ring = np.abs(rib_ring - 1.0) < 0.045
    ribs = on_ring & (np.cos(n_ribs * angle + rib_phase) > 0.55) & (np.sin(angle) > -0.35)
    img[ribs] = _hu(u(700, 1100))

    # Organs: liver on the patient's right (image left), spleen, kidneys, great vessels.
    liver_y = cy - 0.12 * ry + u(-0.03, 0.03)
    liver_x = cx - 0.42 * rx + u(-0.03, 0.03)
    liver = (liver_y, liver_x, u(0.3, 0.42) * ry / 0.6, u(0.3, 0.38), u(-0.4, 0.1))
    img[g.ellipse(*liver) & cavity] = _hu(u(55, 75))
    spleen = (cy + 0.2 * ry, cx + 0.55 * rx, u(0.12, 0.18), u(0.07, 0.1), u(0.4, 0.9))
    img[g.ellipse(*spleen) & cavity] = _hu(u(45, 55))
    for side in (-1, 1):
        kidney = (cy + 0.45 * ry, cx + side * u(0.25, 0.3), u(0.1, 0.13), u(0.07, 0.09), side * u(0.2, 0.5))
        img[g.ellipse(*kidney)] = _hu(u(140, 180))
        hilum = (kidney[0], kidney[1] - side * 0.03, 0.04, 0.02, kidney[4])
        img[g.ellipse(*hilum)] = _hu(-60)
    # Bowel loops: fluid-filled or with gas, anterior.
    for _ in range(4):
        loop = (cy - u(0.0, 0.55) * ry, cx + u(-0.2, 0.5) * rx, u(0.05, 0.1), u(0.05, 0.12), u(0, np.pi))
        gas = rng.random() < 0.4
        loop_mask = g.ellipse(*loop) & cavity
        img[loop_mask] = _hu(20)
        img[g.ellipse(loop[0], loop[1], 0.75 * loop[2], 0.75 * loop[3], loop[4]) & loop_mask] = _hu(-1000 if gas else 10)
    # Spine: vertebral body (cortex + cancellous bone), spinous process, paraspinal muscles.
    spine_y = cy + u(0.4, 0.5) * ry
    vb = u(0.08, 0.1)
    inside_fat = g.ellipse(cy, cx, ry - fat, rx - fat)
    for side in (-1, 1):
        img[g.ellipse(spine_y + 0.17, cx + side * 0.11, 0.1, 0.08) & inside_fat] = _hu(u(45, 60))
    img[g.ellipse(spine_y, cx, vb, vb * 1.1)] = _hu(u(1000, 1300))
    img[g.ellipse(spine_y, cx, vb - 0.015, vb * 1.1 - 0.015)] = _hu(u(200, 350))
    img[g.ellipse(spine_y + vb + 0.06, cx, 0.06, 0.018) & inside_fat] = _hu(u(800, 1100))
    img[g.ellipse(spine_y - vb - 0.04, cx + 0.06, 0.04, 0.04)] = _hu(u(150, 250))  # aorta
    img[g.ellipse(spine_y - vb - 0.05, cx - 0.09, 0.045, 0.035)] = _hu(u(90, 140))  # inferior vena cava

    # Tissue texture, then partial-volume blur.
    img += np.where(body, np.float32(8 / 3000) * _smooth_field(rng, g.shape, 24), np.float32(0))
    img = _blur(img, 0.7)

    nodule = _Nodule(rng, sign_choices=(-1, 1))  # metastases are mostly hypodense, some hyperdense
    if lesion:
        candidates = g.rho2(*liver) < 0.45
        if not candidates.any():
            candidates = g.ellipse(cy, cx, 0.5 * ry, 0.5 * rx)
        img = nodule.add_to(img, candidates)

    sigma = u(8, 20) / 3000  # quantum noise, 8-20 HU
    noise = rng.standard_normal(g.shape, dtype=np.float32)
    return img + np.float32(sigma) * noise


def _mr(grid: _Grid, rng: np.random.Generator, lesion: bool) -> np.ndarray:
    """Axial T1-weighted brain MR: scalp, skull, CSF, folded cortex, white matter, ventricles."""
    g, u = grid, rng.uniform
    cy, cx = u(-0.04, 0.04), u(-0.04, 0.04)
    ry, rx = u(0.8, 0.9), u(0.62, 0.72)
    tilt = u(-0.12, 0.12)
    c, s = np.float32(np.cos(tilt)), np.float32(np.sin(tilt))
    dx0, dy0 = g.x - np.float32(cx), g.y - np.float32(cy)
    dx, dy = c * dx0 + s * dy0, c * dy0 - s * dx0  # head frame: dy anterior(-) to posterior(+)
    rn = np.sqrt((dx / np.float32(rx)) ** 2 + (dy / np.float32(ry)) ** 2)
    theta = np.arctan2(dy / np.float32(ry), dx / np.float32(rx))

    def wiggle(freqs, amp):
        out = np.zeros_like(theta)
        for k in freqs:
            out += np.float32(amp * u(0.5, 1.0)) * np.sin(np.float32(k) * theta + np.float32(u(0, 2 * np.pi)))
        return out

    white_edge = 0.7 + wiggle((7, 11, 17, 23), 0.02)  # grey/white boundary: gyri
    brain_edge = 0.86 + wiggle((3, 5), 0.006)
    gm, wm, csf = u(0.38, 0.45), u(0.58, 0.66), u(0.1, 0.15)

    img = np.zeros(g.shape, dtype=np.float32)
    img[rn <= 1.0] = u(0.62, 0.75)  # scalp fat, bright on T1
    img[rn <= 0.95] = u(0.04, 0.08)  # outer table of the skull
    img[(rn <= 0.925) & (rn > 0.895)] = u(0.35, 0.5)  # diploe (marrow)
    img[rn <= 0.885] = u(0.05, 0.08)  # inner table
    img[rn <= 0.875] = csf  # subarachnoid space
    cortex = rn <= brain_edge
    img[cortex] = gm
    n_sulci = int(rng.integers(28, 40))
    sulcus_phase = u(0, 2 * np.pi)
    # Sulci: CSF clefts into the cortex, unevenly spaced and of uneven depth.
    sulcus_angle = n_sulci * theta + sulcus_phase + 2.0 * np.sin(3 * theta) + wiggle((5, 9), 1.2)
    sulcus_depth = white_edge + 0.02 + wiggle((4, 13), 0.03).clip(0, None)
    sulci = (np.cos(sulcus_angle) > 0.82) & (rn > sulcus_depth)
    img[cortex & sulci] = csf
    white = rn <= white_edge
    img[white] = wm
    fissure = (np.abs(dx) < 0.012) & (rn > 0.35) & cortex
    img[fissure] = csf

    # Deep grey nuclei and the lateral and third ventricles.
    deep = np.zeros(g.shape, dtype=bool)
    ventricles = np.zeros(g.shape, dtype=bool)
    spread = u(0.07, 0.1)
    for side in (-1, 1):
        caudate = (cy - 0.18, cx + side * (spread + 0.07), 0.09, 0.05, side * 0.3)
        thalamus = (cy + 0.1, cx + side * 0.1, 0.1, 0.075, 0.0)
        for part in (caudate, thalamus):
            deep |= g.ellipse(*part)
        ventricles |= g.ellipse(cy - 0.08, cx + side * spread, u(0.2, 0.26), u(0.035, 0.06), -side * 0.25)
    ventricles |= g.ellipse(cy + 0.08, cx, 0.08, 0.012)
    img[deep & white] = u(0.45, 0.5)
    img[ventricles] = csf

    img *= 1.0 + np.float32(0.04) * _smooth_field(rng, g.shape, 12) * (rn <= brain_edge)
    img = _blur(img, 0.8)

    nodule = _Nodule(rng, sign_choices=(-1, 1))
    if lesion:
        candidates = (rn < white_edge - 0.08) & (rn > 0.25) & ~ventricles & ~deep
        if not candidates.any():
            candidates = rn < 0.6
        img = nodule.add_to(img, candidates)

    # Receive-coil bias field: smooth, multiplicative, up to about +-20 %.
    tilt_y, tilt_x = u(-0.12, 0.12), u(-0.12, 0.12)
    bias = np.exp(np.float32(tilt_y) * g.y + np.float32(tilt_x) * g.x + np.float32(0.06) * _smooth_field(rng, g.shape, 2))
    signal = img * bias.astype(np.float32)
    # Rician noise: the magnitude of a complex signal with Gaussian noise in both channels.
    sigma = np.float32(u(0.01, 0.03))
    real = signal + sigma * rng.standard_normal(g.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(g.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)


def _xray(grid: _Grid, rng: np.random.Generator, lesion: bool) -> np.ndarray:
    """PA chest radiograph: torso, lungs with markings, heart, mediastinum, ribs, clavicles."""
    g, u = grid, rng.uniform
    y, x = g.y, g.x
    half_width = u(0.8, 0.92)
    shift = u(-0.04, 0.04)
    xs = x - np.float32(shift)
    axs = np.abs(xs)

    # Soft tissue: thickness of a rounded torso, thicker in the middle; shoulders at the top.
    torso_r = (axs / np.float32(half_width)) ** 4 + ((y - np.float32(0.35)) / np.float32(1.35)) ** 4
    torso = np.clip(1.0 - torso_r, 0.0, 1.0) ** np.float32(0.35)
    neck = np.clip(1.0 - (xs / np.float32(0.2)) ** 2, 0.0, 1.0) ** np.float32(0.5) * np.clip((-0.55 - y) / 0.3, 0.0, 1.0)
    tissue = np.maximum(torso, neck)
    img = np.float32(u(0.1, 0.14)) + np.float32(u(0.38, 0.46)) * tissue

    # Lungs: projected air volume, darkest in the middle of each lung, diaphragm domes below.
    lung_y = u(-0.12, -0.02)
    right_lung = g.dome(lung_y, shift - u(0.36, 0.42), u(0.58, 0.66), u(0.27, 0.32), angle=u(-0.12, -0.02), power=0.6)
    left_lung = g.dome(lung_y - 0.02, shift + u(0.36, 0.42), u(0.54, 0.62), u(0.25, 0.3), angle=u(0.02, 0.12), power=0.6)
    lungs = np.maximum(right_lung, left_lung)
    img -= np.float32(u(0.24, 0.3)) * lungs

    # Heart (bulging to the patient's left = image right), mediastinum and spine.
    heart = g.dome(u(0.25, 0.35), shift + u(0.06, 0.12), u(0.22, 0.28), u(0.26, 0.32), angle=u(0.2, 0.45), power=0.7)
    img += np.float32(u(0.18, 0.24)) * heart
    mediastinum = np.clip(1.0 - (xs / np.float32(0.13)) ** 2, 0.0, 1.0) * (y < 0.7)
    img += np.float32(0.1) * mediastinum
    vertebrae = 0.5 + 0.5 * np.cos(2 * np.pi * (y - np.float32(u(0, 0.1))) / np.float32(0.11))
    img += np.float32(0.05) * np.clip(1.0 - (xs / np.float32(0.06)) ** 2, 0.0, 1.0) * (0.6 + 0.4 * vertebrae)

    # Ribs: posterior ribs curve down laterally, anterior ribs run down medially; both fade out
    # at the spine and beyond the chest wall. One periodic expression draws all of them.
    inside_chest = (axs > 0.08) & (axs < half_width * 0.93) & (y > -0.85) & (y < 0.55)
    posterior = (y + np.float32(u(0.78, 0.86)) - np.float32(u(0.35, 0.5)) * xs * xs) / np.float32(u(0.12, 0.14))
    frac = posterior - np.floor(posterior)
    rib_band = np.clip(1.0 - ((frac - 0.17) / 0.17) ** 2, 0.0, 1.0) ** np.float32(0.4)
    img += np.float32(u(0.05, 0.08)) * rib_band * inside_chest * (posterior >= 0) * (posterior < 10)
    anterior = (y + np.float32(u(0.55, 0.65)) + np.float32(0.5) * axs) / np.float32(u(0.17, 0.2))
    frac = anterior - np.floor(anterior)
    rib_band = np.clip(1.0 - ((frac - 0.12) / 0.12) ** 2, 0.0, 1.0)
    img += np.float32(0.03) * rib_band * inside_chest * (anterior >= 1) * (anterior < 6) * (axs > 0.2)
    clavicle_line = np.float32(-0.74) - np.float32(0.2) * (axs - np.float32(0.1))
    clavicles = np.clip(1.0 - ((y - clavicle_line) / np.float32(0.03)) ** 2, 0.0, 1.0) * (axs > 0.06) * (axs < 0.6)
    img += np.float32(0.09) * clavicles

    # Bronchovascular markings inside the lungs, densest at the hila.
    img += np.float32(0.03) * _smooth_field(rng, g.shape, 22) * lungs
    for side in (-1, 1):
        img += np.float32(0.06) * g.dome(lung_y + 0.05, shift + side * 0.17, 0.12, 0.07, power=1.5)

    # Heel effect and exposure gradient, then detector unsharpness.
    img *= np.float32(1.0) + np.float32(u(-0.06, 0.06)) * y + np.float32(u(-0.04, 0.04)) * x
    img = _blur(img, 1.0)

    nodule = _Nodule(rng, sign_choices=(1,))  # a nodule is denser than the lung around it
    if lesion:
        candidates = (lungs > 0.55) & (heart < 0.05)
        if not candidates.any():
            candidates = lungs > 0.2
        img = nodule.add_to(img, candidates)

    sigma = np.float32(u(0.004, 0.01))
    return img + sigma * rng.standard_normal(g.shape, dtype=np.float32)


_GENERATORS = {"ct": _ct, "mr": _mr, "xray": _xray}


def synth_image(kind: str, shape: tuple[int, int], rng: np.random.Generator, lesion: bool) -> np.ndarray:
    """One synthetic image of ``kind`` ('ct', 'mr' or 'xray'): float32 in [0, 1], shape ``shape``.

    The same ``rng`` state gives the same anatomy and noise with or without ``lesion``.
    """
    if kind not in _GENERATORS:
        raise BadInputError(f"unknown synthetic image kind {kind!r}; choose one of {', '.join(KINDS)}")
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise BadInputError(f"shape must be (height, width), got {shape!r}") from None
    if min(h, w) < _MIN_SIDE:
        raise BadInputError(f"synthetic images must be at least {_MIN_SIDE} pixels a side, got {h}x{w}")
    image = _GENERATORS[kind](_Grid((h, w)), rng, bool(lesion))
    return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)


def balanced_lesion_labels(kinds: list[str], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly round(n * fraction) lesions, spread evenly over the kinds (modalities, or any
    background groups) and at random within each, so that a classifier cannot use the kind as a
    shortcut for the label."""
    n = len(kinds)
    order = sorted(range(n), key=lambda i: (kinds[i], rng.random()))
    counts = np.floor((np.arange(n + 1)) * fraction + 0.5).astype(int)
    labels = np.zeros(n, dtype=np.uint8)
    labels[order] = np.diff(counts)
    return labels


def _to_stored(image: np.ndarray, bit_depth: int) -> np.ndarray:
    top = 65535 if bit_depth == 16 else 255
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    return np.rint(np.clip(image, 0.0, 1.0).astype(np.float64) * top).astype(dtype)


def _write(path: Path, pixels: np.ndarray) -> None:
    if path.suffix == ".png":
        write_atomically(path, png_bytes(pixels, compress_level=1))
    else:
        import tifffile

        write_atomically(path, lambda handle: tifffile.imwrite(handle, pixels, photometric="minisblack"))


def write_synthetic_dataset(
    out_dir,
    n: int,
    size: int = 256,
    seed: int = 0,
    lesion_fraction: float = 0.5,
    bit_depth: int = 16,
    fmt: str = "png",
    kinds: Sequence[str] | None = None,
) -> Path:
    """Write ``n`` square images and ``labels.csv`` (``path,label``; 1 = lesion) to ``out_dir``.

    Files are named ``{kind}_{i:05d}.png`` (or ``.tif``), the kinds cycling through ``kinds``
    (default: all of ``KINDS``). Pixels are stored at ``bit_depth`` 8 or 16 bits ([0, 1] scaled to
    0..255 or 0..65535 and rounded). Image ``i`` depends only on ``seed`` and ``i``, so the output
    is reproducible. Existing files of the same names are replaced. Returns the CSV's path.
    """
    kinds = list(KINDS if kinds is None else kinds)
    if not kinds:
        raise BadInputError("give at least one synthetic image kind")
    for kind in kinds:
        if kind not in KINDS:
            raise BadInputError(f"unknown synthetic image kind {kind!r}; choose one of {', '.join(KINDS)}")
    if int(n) < 1:
        raise BadInputError(f"the number of images must be at least 1, got {n}")
    if int(size) < 64:
        raise BadInputError(f"synthetic images must be at least 64 pixels a side, got {size}")
    if bit_depth not in (8, 16):
        raise BadInputError(f"bit depth must be 8 or 16, got {bit_depth}")
    suffix = _FORMATS.get(str(fmt).lower())
    if suffix is None:
        raise BadInputError(f"unknown image format {fmt!r}; choose png or tiff")
    if not 0.0 <= float(lesion_fraction) <= 1.0:
        raise BadInputError(f"lesion fraction must be between 0 and 1, got {lesion_fraction}")
    if int(seed) < 0:
        raise BadInputError(f"seed must be zero or positive, got {seed}")
    n, size, seed = int(n), int(size), int(seed)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image_kinds = [kinds[i % len(kinds)] for i in range(n)]
    labels = balanced_lesion_labels(image_kinds, float(lesion_fraction), np.random.default_rng([seed, n, 1]))

    rows = []
    # Encoding a file (zlib, which releases the GIL) overlaps with making the next image.
    with ThreadPoolExecutor(max_workers=1) as writer_thread:
        pending = []
        for i, (kind, label) in enumerate(zip(image_kinds, labels)):
            image = synth_image(kind, (size, size), np.random.default_rng([seed, i]), lesion=bool(label))
            name = f"{kind}_{i:05d}{suffix}"
            pending.append(writer_thread.submit(_write, out / name, _to_stored(image, bit_depth)))
            rows.append((name, int(label)))
            if len(pending) > 8:
                pending.pop(0).result()  # bound memory, and surface write errors early
        for job in pending:
            job.result()

    csv_path = out / "labels.csv"

    write_atomically(csv_path, csv_text(["path", "label"], rows))
    return csv_path
