"""Image quality on stored pixel values: PSNR in every view a reader uses, SSIM, max |error|.

Everything here works on numpy arrays of the values as stored in the file, never on a model's
floats: the guarantee is about what a viewer will load. A view (see `views.py`) maps stored
values to display values in units of its own peak, so the PSNR in a view is 10·log10(1 / MSE)
of the two displays. The floor holds in the *binding* views, which by default are all the views
a reader uses (design §1); the others are still measured and reported.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Iterator, Literal

import numpy as np

from .errors import BadInputError
from .views import DataRangeView, View, VoiView, VoiWindow, nominal_view, reader_views, stored_range_view

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


def mean_squared_error(reference: np.ndarray, test: np.ndarray, *, overwrite_test: bool = False) -> float:
    """overwrite_test: `test` is the caller's scratch (a display made for this one measure), and
    the difference may be written over it rather than into a new array."""
    # asarray: displays are float64 already, and the guard measures many (no copies of them).
    reference, test = np.asarray(reference, dtype=np.float64), np.asarray(test, dtype=np.float64)
    # Into `test` only where a new array would have had its layout too (C order): the mean then
    # adds the squares up in the very same order.
    reuse = overwrite_test and reference.flags.c_contiguous and test.flags.c_contiguous
    difference = np.subtract(reference, test, out=test if reuse else None)
    return float(np.mean(np.square(difference, out=difference)))


def psnr(reference: np.ndarray, test: np.ndarray, peak: float, *, overwrite_test: bool = False) -> float:
    """10 log10(peak² / MSE) in dB; +inf for identical images (`overwrite_test`: see
    `mean_squared_error`)."""
    if peak <= 0:
        raise ValueError("PSNR peak must be positive")
    mse = mean_squared_error(reference, test, overwrite_test=overwrite_test)
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
    products = np.stack([x, y, x * x, y * y, x * y])
    # Only pixels at least the radius from every edge are averaged, and their windows never
    # reach past the frame: down the columns, the Gaussian as a sum of whole shifted rows
    # (contiguous, symmetric taps in pairs), which is twice as fast as filtering along the
    # strided axis; along the rows, scipy's filter, whose edge mode then never matters.
    kernel, radius = _ssim_kernel(), _SSIM_RADIUS
    rows = reference.shape[0] - 2 * radius
    means = products[:, radius : radius + rows] * kernel[radius]
    for tap in range(radius):
        pair = products[:, tap : tap + rows] + products[:, 2 * radius - tap : 2 * radius - tap + rows]
        pair *= kernel[tap]
        means += pair
    means = correlate1d(means, kernel, axis=2, mode="reflect")[:, :, radius:-radius]
    mean_x, mean_y, mean_xx, mean_yy, mean_xy = means
    both, square_x, square_y = mean_x * mean_y, mean_x * mean_x, mean_y * mean_y
    c1, c2 = np.float32(_SSIM_K1**2), np.float32(_SSIM_K2**2)
    similarity = ((2 * both + c1) * (2 * (mean_xy - both) + c2)
                  / ((square_x + square_y + c1) * ((mean_xx - square_x) + (mean_yy - square_y) + c2)))
    return float(similarity.mean(dtype=np.float64))


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


# Tables of displays serve frames of 1- and 2-byte integer types (a 16-bit table: 65536 float64,
# 512 KiB) whose pixels number at least a quarter of the table's entries: a table costs about what
# displaying its entries does, and an embed displays each frame in each view more than four times
# (the budget fill's tries, the check, the written file's re-measurement), so it pays for itself.
_TABLE_ITEMSIZE = 2
_TABLE_MIN_PIXELS_PER_ENTRY = 0.25
# What the tables of one image's meters hold at most (32 tables of 16 bits): enough for every
# view of a frame being guarded, not one data-range table for each of hundreds of frames.
_TABLE_BUDGET_BYTES = 16 * 2**20


class DisplayTables:
    """Views' displays of every value of an integer type, one float64 table each (made when
    first wanted), shared by the meters of one image (`frame_meters`).

    Display is elementwise, so a table that the view's own `display` made over every value of
    the type gives, looked up, the very values `display` would, bit for bit, for a fraction of
    the cost (one gather per pixel instead of the modality and VOI arithmetic): the guard
    measures many candidate frames, all of the original's type, in every view. Views equal
    across frames (`View.display_key`: the windows, usually) share a table; beyond
    `budget_bytes` the least recently used tables are dropped (every frame has a data-range view
    of its own). One image's meters are used by one thread at a time."""

    def __init__(self, budget_bytes: int = _TABLE_BUDGET_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self._tables: OrderedDict[tuple, tuple[View, np.ndarray]] = OrderedDict()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """What the tables held now take."""
        return self._bytes

    def table(self, view: View, dtype: np.dtype) -> np.ndarray | None:
        """`view.display` of every value of `dtype`, from its least; None where the view shares
        its display with no other (`display_key` None)."""
        key = view.display_key()
        if key is None:
            return None
        key = (key, dtype.str)
        held = self._tables.get(key)
        if held is not None:
            self._tables.move_to_end(key)
            return held[1]
        info = np.iinfo(dtype)
        table = view.display(np.arange(info.min, info.max + 1, dtype=dtype))
        # The view is kept beside its table: a key names LUT arrays by identity (see display_key).
        self._tables[key] = (view, table)
        self._bytes += table.nbytes
        while self._bytes > self.budget_bytes and len(self._tables) > 1:
            _, (_, dropped) = self._tables.popitem(last=False)
            self._bytes -= dropped.nbytes
        return table


class FrameMeter:
    """Measures candidate frames against one original frame in fixed views.

    The original's display in each view is computed once, and candidates of the original's own
    integer type are displayed from tables (`DisplayTables`, shared with the other frames'
    meters where given): the quality guard measures many candidates of the same frame."""

    def __init__(self, original: np.ndarray, binding: list[View], reported: list[View], nominal: View,
                 tables: DisplayTables | None = None) -> None:
        if not binding:
            raise ValueError("a frame needs at least one binding view")
        self.original = original
        self.binding = binding
        names = {view.name for view in binding}
        self.reported = [view for view in reported if view.name not in names]
        self.nominal = nominal
        dtype = original.dtype
        tabled = (dtype.kind in "iu" and dtype.itemsize <= _TABLE_ITEMSIZE
                  and original.size >= _TABLE_MIN_PIXELS_PER_ENTRY * 2 ** (8 * dtype.itemsize))
        self._tables = (tables if tables is not None else DisplayTables()) if tabled else None
        views = [*binding, *self.reported, nominal]
        self._displays = {id(view): shown for view, shown in zip(views, self._shown(views, original))}
        # A frame with padding is measured over its other pixels: padding is background to a
        # viewer and never marked, and counted in, its unchanged pixels would dilute the error
        # (a frame three quarters padding held 40 dB over all its pixels and 34 over the rest).
        self._content = None
        if self.padding is not None:
            content = (original < self.padding[0]) | (original > self.padding[1])
            if content.any() and not content.all():
                self._content = content
                self._references = {key: shown[content] for key, shown in self._displays.items()}

    @property
    def data_range(self) -> DataRangeView | None:
        """The frame's data range (`views.DataRangeView`) where the floor holds in it: a viewer
        that windows to the data takes it from the frame it shows, so the guard keeps the written
        frame's minimum and maximum, and its padding (`guard.guard_image`)."""
        return next((view for view in self.binding if isinstance(view, DataRangeView)), None)

    @property
    def padding(self) -> tuple[int, int] | None:
        """The frame's padding values (Pixel Padding Value, stored units, inclusive; a
        `views.DataRangeView` keeps them) in whatever domain the floor holds: never marked."""
        return next((view.padding for view in [*self.binding, *self.reported]
                     if isinstance(view, DataRangeView) and view.padding is not None), None)

    def display(self, view: View, stored: np.ndarray) -> np.ndarray:
        """`view.display(stored)`, bit for bit (see `_shown`)."""
        return next(self._shown([view], stored))

    def _shown(self, views: list[View], stored: np.ndarray) -> Iterator[np.ndarray]:
        """`view.display(stored)` for each of `views`, each a new array, bit for bit: looked up
        in the view's table where `stored` has the original's type and C order (another order
        gives displays in that order too, and a sum over them, an MSE, might add up otherwise)."""
        index = None
        if self._tables is not None and stored.dtype == self.original.dtype and stored.flags.c_contiguous:
            index = stored.astype(np.intp)  # each value's place in a table: value − the type's least
            if least := int(np.iinfo(stored.dtype).min):
                index -= least
        for view in views:
            table = self._tables.table(view, stored.dtype) if index is not None else None
            yield view.display(stored) if table is None else table.take(index)

    def _psnrs(self, views: list[View], test: np.ndarray) -> list[float]:
        """The PSNR of `test` in each of `views` (this meter's). Each display is made for this
        measure alone, so the difference is written over it."""
        if self._content is not None:
            return [psnr(self._references[id(view)], shown[self._content], 1.0, overwrite_test=True)
                    for view, shown in zip(views, self._shown(views, test))]
        return [psnr(self._displays[id(view)], shown, 1.0, overwrite_test=True)
                for view, shown in zip(views, self._shown(views, test))]

    def binding_psnr(self, test: np.ndarray) -> float:
        """The lowest PSNR over the binding views: what the floor is held against."""
        return min(self._psnrs(self.binding, test))

    def measure(self, test: np.ndarray) -> FrameQuality:
        measured = self._psnrs([*self.binding, *self.reported, self.nominal], test)
        binding = {view.name: value for view, value in zip(self.binding, measured)}
        worst = min(binding, key=lambda name: binding[name])
        views = {**binding, **{view.name: value for view, value in zip(self.reported, measured[len(self.binding):])}}
        difference = np.abs(self.original.astype(np.float64) - test.astype(np.float64))
        error = float(difference.max()) if difference.size else 0.0
        return FrameQuality(psnr=binding[worst], binding_view=worst, views=views,
                            nominal_psnr=measured[-1], max_abs_error=error)

    def with_ssim(self, quality: FrameQuality, test: np.ndarray) -> FrameQuality:
        """`quality` (of `test`) with the SSIM in its binding view added (slower: measured once,
        for the frame that is kept)."""
        view = self.view_named(quality.binding_view)
        return replace(quality, ssim=ssim(self._displays[id(view)], self.display(view, test), 1.0))

    def view_named(self, name: str) -> View:
        return next(view for view in (*self.binding, *self.reported) if view.name == name)


def frame_meters(image, floor: QualityFloor, window: tuple[float, float] | None = None) -> list[FrameMeter]:
    """One meter per frame of a `MedicalImage`. `window` is the user's `--window` (centre, width
    in modality units): one more view the floor holds in, or, in the window domain, the one."""
    user = (VoiWindow(window[0], window[1], origin="user"),) if window is not None else ()
    tables = DisplayTables()  # one for all frames: their windows are usually the same
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
        meters.append(FrameMeter(original, binding, readers, nominal, tables))
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
