"""Image quality on stored pixel values: PSNR in every view a reader uses, SSIM, max |error|.

Everything here works on numpy arrays of the values as stored in the file, never on a model's
floats: the guarantee is about what a viewer will load. A view (see `views.py`) maps stored
values to display values in units of its own peak, so the PSNR in a view is 10·log10(1 / MSE)
of the two displays. The floor holds in the *binding* views, which by default are all the views
a reader uses (design §1); the others are still measured and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from .errors import BadInputError
from .views import View, VoiView, VoiWindow, nominal_view, reader_views, stored_range_view

PeakKind = Literal["nominal", "range"]
Domain = Literal["view", "stored", "window"]
PEAK_KINDS = ("nominal", "range")
DOMAINS = ("view", "stored", "window")
# A floor outside (0, 200) dB is a mistake (a negative floor allows any change; 200 dB is below
# the rounding of any stored value): refused wherever it comes from.
_FLOOR_RANGE_DB = (0.0, 200.0)


def checked_psnr_min(value, name: str = "psnr_min") -> float:
    """`value` as a floor in dB, or a one-line BadInputError naming `name` (an option, a config
    key): a number, finite, above 0 and below 200 dB. Text, booleans and NaN are refused."""
    low, high = _FLOOR_RANGE_DB
    number = value if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) else None
    if number is None or not low < float(number) < high:  # `not <` also refuses NaN
        raise BadInputError(f"{name} must be a number of dB above {low:g} and below {high:g}, got {value!r}")
    return float(number)


def mean_squared_error(reference: np.ndarray, test: np.ndarray) -> float:
    # asarray: displays are float64 already, and the guard measures many (no copies of them).
    difference = np.asarray(reference, dtype=np.float64) - np.asarray(test, dtype=np.float64)
    return float(np.mean(np.square(difference, out=difference)))


def psnr(reference: np.ndarray, test: np.ndarray, peak: float) -> float:
    """10 log10(peak² / MSE) in dB; +inf for identical images."""
    if peak <= 0:
        raise ValueError("PSNR peak must be positive")
    mse = mean_squared_error(reference, test)
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(peak * peak / mse))


def ssim(reference: np.ndarray, test: np.ndarray, data_range: float) -> float:
    """Mean SSIM of one 2-D frame (Wang et al. 2004): Gaussian weights of σ 1.5 (11 px),
    population covariances, the border of 5 px left out of the mean; scikit-image's
    `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`,
    computed here in float32 with the five filtered maps in one pass (it agrees to 1e-6, about a
    third faster: every embed measures one; `benchmarks/speed.py`)."""
    from scipy.ndimage import correlate1d

    if reference.ndim != 2 or reference.shape != test.shape:
        raise ValueError("SSIM compares two 2-D frames of one shape")
    if min(reference.shape) < 2 * _SSIM_RADIUS + 1:  # smaller than the Gaussian window
        return float("nan")
    scale = np.float32(1.0 / data_range)
    x, y = reference.astype(np.float32) * scale, test.astype(np.float32) * scale
    means = np.stack([x, y, x * x, y * y, x * y])
    for axis in (1, 2):
        means = correlate1d(means, _ssim_kernel(), axis=axis, mode="reflect")
    mean_x, mean_y, mean_xx, mean_yy, mean_xy = means
    both, square_x, square_y = mean_x * mean_y, mean_x * mean_x, mean_y * mean_y
    c1, c2 = np.float32(_SSIM_K1**2), np.float32(_SSIM_K2**2)
    similarity = ((2 * both + c1) * (2 * (mean_xy - both) + c2)
                  / ((square_x + square_y + c1) * ((mean_xx - square_x) + (mean_yy - square_y) + c2)))
    inner = similarity[_SSIM_RADIUS:-_SSIM_RADIUS, _SSIM_RADIUS:-_SSIM_RADIUS]
    return float(inner.mean(dtype=np.float64))


_SSIM_K1, _SSIM_K2, _SSIM_SIGMA, _SSIM_RADIUS = 0.01, 0.03, 1.5, 5


def _ssim_kernel() -> np.ndarray:
    offsets = np.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / _SSIM_SIGMA) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


@dataclass(frozen=True)
class QualityFloor:
    """What the user asked for: PSNR >= psnr_min in the views of `domain`, and an optional
    per-pixel |error| bound in stored units.

    - `view` (default): every view a reader uses (`views.reader_views`).
    - `stored`: the stored values against `peak` (nominal 2^BitsStored − 1, or the frame's
      stored range): the expert's choice, reported against the reader's views all the same.
    - `window`: one VOI window (the user's `--window`, else the file's first declared window).
    """

    psnr_min: float = 40.0
    peak: PeakKind = "nominal"
    domain: Domain = "view"
    max_abs_error: float | None = None

    def __post_init__(self) -> None:
        # Checked wherever a floor is made (command line, YAML, the serve config, Python): no
        # floor that checks nothing reaches the guard.
        object.__setattr__(self, "psnr_min", checked_psnr_min(self.psnr_min))
        if self.peak not in PEAK_KINDS:
            raise BadInputError(f"the PSNR peak must be one of {', '.join(PEAK_KINDS)}, got {self.peak!r}")
        if self.domain not in DOMAINS:
            raise BadInputError(f"the PSNR domain must be one of {', '.join(DOMAINS)}, got {self.domain!r}")
        if self.peak != "nominal" and self.domain != "stored":
            raise BadInputError("--psnr-peak applies to --psnr-domain stored only (every view has its own peak)")
        error = self.max_abs_error
        if error is not None and (isinstance(error, bool) or not isinstance(error, (int, float, np.integer, np.floating))
                                  or not (np.isfinite(error) and error >= 0)):
            raise BadInputError(f"--max-abs-error must be a finite number >= 0, got {error!r}")


@dataclass(frozen=True)
class FrameQuality:
    """One frame's quality. `psnr` is the lowest PSNR over the binding views (`binding_view`
    names it); `views` holds the PSNR in every measured view, binding or reported."""

    psnr: float
    binding_view: str
    views: dict[str, float]
    nominal_psnr: float
    max_abs_error: float
    ssim: float | None = None

    def below_floor(self, floor: QualityFloor) -> list[str]:
        """The measured views whose PSNR is under the floor (written as "not >=": NaN counts)."""
        return [name for name, value in self.views.items() if not value >= floor.psnr_min]


class FrameMeter:
    """Measures candidate frames against one original frame in fixed views.

    The original's display in each view is computed once: the quality guard measures many
    candidates of the same frame."""

    def __init__(self, original: np.ndarray, binding: list[View], reported: list[View], nominal: View) -> None:
        if not binding:
            raise ValueError("a frame needs at least one binding view")
        self.original = original
        self.binding = binding
        names = {view.name for view in binding}
        self.reported = [view for view in reported if view.name not in names]
        self.nominal = nominal
        self._displays = {id(view): view.display(original) for view in (*binding, *self.reported, nominal)}

    def _psnr(self, view: View, test: np.ndarray) -> float:
        return psnr(self._displays[id(view)], view.display(test), 1.0)

    def binding_psnr(self, test: np.ndarray) -> float:
        """The lowest PSNR over the binding views: what the floor is held against."""
        return min(self._psnr(view, test) for view in self.binding)

    def measure(self, test: np.ndarray) -> FrameQuality:
        binding = {view.name: self._psnr(view, test) for view in self.binding}
        worst = min(binding, key=lambda name: binding[name])
        views = {**binding, **{view.name: self._psnr(view, test) for view in self.reported}}
        difference = np.abs(self.original.astype(np.float64) - test.astype(np.float64))
        error = float(difference.max()) if difference.size else 0.0
        return FrameQuality(psnr=binding[worst], binding_view=worst, views=views,
                            nominal_psnr=self._psnr(self.nominal, test), max_abs_error=error)

    def with_ssim(self, quality: FrameQuality, test: np.ndarray) -> FrameQuality:
        """`quality` (of `test`) with the SSIM in its binding view added (slower: measured once,
        for the frame that is kept)."""
        view = self.view_named(quality.binding_view)
        return replace(quality, ssim=ssim(self._displays[id(view)], view.display(test), 1.0))

    def view_named(self, name: str) -> View:
        return next(view for view in (*self.binding, *self.reported) if view.name == name)


def frame_meters(image, floor: QualityFloor, window: tuple[float, float] | None = None) -> list[FrameMeter]:
    """One meter per frame of a `MedicalImage`. `window` is the user's `--window` (centre, width
    in modality units): one more view the floor holds in, or, in the window domain, the one."""
    user = (VoiWindow(window[0], window[1], origin="user"),) if window is not None else ()
    meters = []
    for index, original in enumerate(image.pixels):
        readers = reader_views(image, index, user)
        nominal = nominal_view(image)
        if floor.domain == "view":
            binding = readers
        elif floor.domain == "stored":
            binding = [nominal if floor.peak == "nominal" else stored_range_view(original)]
        elif floor.domain == "window":
            windows = [v for v in readers if isinstance(v, VoiView) and isinstance(v.voi, VoiWindow)
                       and v.voi.origin in ("user", "declared")]  # a window, not a VOI LUT
            chosen = [v for v in windows if v.voi.origin == "user"] or windows[:1]
            if not chosen:
                raise BadInputError(f"{image.path}: the window domain needs a VOI window (Window Center/Width "
                                    "in the file, or --window C,W)")
            binding = chosen
        else:
            raise ValueError(f"unknown PSNR domain {floor.domain!r}")
        meters.append(FrameMeter(original, binding, readers, nominal))
    return meters


def meets_floor(quality: FrameQuality, floor: QualityFloor) -> bool:
    # Written as "not >=" so that a NaN anywhere counts as a miss, never as a pass.
    if not quality.psnr >= floor.psnr_min:
        return False
    return floor.max_abs_error is None or quality.max_abs_error <= floor.max_abs_error


@dataclass(frozen=True)
class ImageQuality:
    """A whole image's quality: the worst frame for each measure (the floor holds per frame)."""

    psnr: float
    binding_view: str
    views: dict[str, float]
    nominal_psnr: float
    ssim: float
    max_abs_error: float


def image_quality(frames: list[FrameQuality]) -> ImageQuality:
    """Summarise per-frame qualities: the worst frame's binding view, each view's worst frame."""
    worst = min(frames, key=lambda q: q.psnr)
    views: dict[str, float] = {}
    for frame in frames:
        for name, value in frame.views.items():
            views[name] = min(views.get(name, np.inf), value)
    structural = [q.ssim for q in frames if q.ssim is not None]
    return ImageQuality(
        psnr=worst.psnr,
        binding_view=worst.binding_view,
        views=views,
        nominal_psnr=min(q.nominal_psnr for q in frames),
        ssim=min(structural) if structural else float("nan"),
        max_abs_error=max(q.max_abs_error for q in frames),
    )
