"""How a reader views a frame, and therefore where the PSNR floor must hold (design §1).

A stored value reaches a reader's eyes through the DICOM grayscale pipeline (PS3.3 C.11): the
modality transform (Rescale Slope/Intercept, or a Modality LUT) gives modality values (HU for
CT), then a VOI transform (a Window Center/Width pair with its VOI LUT Function, or a VOI LUT)
maps them to the display. A viewer offers every window the file declares; a viewer that is given
none stretches the frame's own data range; a CT reader also switches to the standard clinical
windows (brain, soft tissue, lung, bone presets), whatever the file declares. Each of those is a **view** here, and the floor holds in all of
them: a mark budgeted against the nominal peak (2^BitsStored − 1) alone is plainly visible in a
CT's brain window.

Every view maps stored values to display values in units of its own peak (a window to [0, 1],
the data range to (value − min) / (max − min) of the original frame), so the PSNR in any view is
10·log10(1 / MSE) of the two displays. `reader_views` lists the views of one frame; `Display`
holds what the file says about its pipeline, read once by `io.image`.

CT windows that are views of every CT frame, beside the windows it declares (centre / width in
HU; the usual reading-room presets, e.g. Radiopaedia's "Windowing (CT)"):

| name        | centre | width |
|-------------|--------|-------|
| brain       |     40 |    80 |
| soft tissue |     40 |   400 |
| lung        |   −600 |  1500 |
| bone        |    400 |  1800 |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import BadInputError

#: (name, centre, width) in HU: views of every CT frame, beside its declared windows.
CT_STANDARD_WINDOWS: tuple[tuple[str, float, float], ...] = (
    ("brain", 40.0, 80.0),
    ("soft tissue", 40.0, 400.0),
    ("lung", -600.0, 1500.0),
    ("bone", 400.0, 1800.0),
)

VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


# ---------------------------------------------------------------------------- the pipeline ----

@dataclass(frozen=True)
class ModalityTransform:
    """Stored value → modality value: slope · x + intercept, or a Modality LUT (PS3.3 C.11.1)."""

    slope: float = 1.0
    intercept: float = 0.0
    lut: np.ndarray | None = field(default=None, compare=False)
    lut_first: int = 0

    @property
    def is_linear(self) -> bool:
        return self.lut is None

    def apply(self, stored: np.ndarray) -> np.ndarray:
        if self.lut is not None:
            return _look_up(self.lut, self.lut_first, stored)
        values = stored.astype(np.float64)  # a new array (even from float64): worked in place
        if self.slope != 1.0:
            values *= self.slope
        if self.intercept:
            values += self.intercept
        return values

    def key(self) -> tuple:
        """Equal for two transforms that map every stored value alike (see `View.display_key`)."""
        return (self.slope, self.intercept, None, 0) if self.lut is None else (None, None, id(self.lut), self.lut_first)


@dataclass(frozen=True)
class VoiWindow:
    """One Window Center/Width pair in modality units, with its VOI LUT Function."""

    center: float
    width: float
    function: str = "LINEAR"
    label: str = ""  # Window Center & Width Explanation, or a standard window's name
    origin: str = "declared"  # declared (in the file) | standard (CT table) | user (--window)

    def key(self) -> tuple:
        """What `apply` depends on (the label and origin only name the window)."""
        return ("window", float(self.center), float(self.width), self.function)

    def apply(self, values: np.ndarray) -> np.ndarray:
        """PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT) and C.11.2.1.3.1 (SIGMOID), to [0, 1]."""
        c, w = float(self.center), float(self.width)
        if self.function == "SIGMOID":
            return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - c) / w, -700.0, 700.0)))
        if self.function == "LINEAR_EXACT":
            return np.clip((values - c) / w + 0.5, 0.0, 1.0)
        if w <= 1.0:  # LINEAR with width 1: a threshold at c − 0.5
            return (values > c - 0.5).astype(np.float64)
        display = values - (c - 0.5)  # a new array: the steps below work in it (the guard makes many)
        display /= w - 1.0
        display += 0.5
        return np.clip(display, 0.0, 1.0, out=display)

    def describe(self) -> str:
        numbers = f"C{self.center:g}/W{self.width:g}"
        function = "" if self.function == "LINEAR" else f" {self.function.lower()}"
        if self.origin == "standard":
            return f"CT {self.label} window {numbers}"
        if self.origin == "user":
            return f"window {numbers}{function} (--window)"
        return f"window {numbers}{function}" + (f" ({self.label})" if self.label else "")


@dataclass(frozen=True)
class VoiLut:
    """A VOI LUT Sequence item: modality value → display level, output normalised to [0, 1]."""

    data: np.ndarray = field(compare=False)
    first_mapped: int
    output_bits: int
    label: str = ""

    def key(self) -> tuple:
        return ("lut", id(self.data), self.first_mapped, self.output_bits)

    def apply(self, values: np.ndarray) -> np.ndarray:
        top = float(max(2 ** self.output_bits - 1, 1))
        return _look_up(self.data, self.first_mapped, values) / top

    def describe(self) -> str:
        return "VOI LUT" + (f" ({self.label})" if self.label else f" of {len(self.data)} entries")


VoiTransform = VoiWindow | VoiLut


@dataclass(frozen=True)
class FrameDisplay:
    """What the file says about viewing one frame: its modality transform and declared VOIs."""

    modality: ModalityTransform = ModalityTransform()
    vois: tuple[VoiTransform, ...] = ()


@dataclass(frozen=True)
class Display:
    """The display pipeline of every frame of an image: one shared description, or one per
    frame where an enhanced multi-frame object declares them per frame."""

    shared: FrameDisplay = FrameDisplay()
    per_frame: tuple[FrameDisplay, ...] | None = None
    # The top-level VOIs of an object whose functional groups declare the frames' own: dcmtk 3.6
    # shows these (over the functional groups' rescale), and so does a reader that reads no
    # functional groups (over the top-level rescale).
    top_level: FrameDisplay | None = None
    # Pixel Padding Value (and Range Limit), stored units, inclusive: pixels a viewer shows as
    # background and leaves out when it windows to the data (PS3.3 C.7.5.1.1.2).
    padding: tuple[int, int] | None = None

    def frame(self, index: int) -> FrameDisplay:
        if self.per_frame is not None and index < len(self.per_frame):
            return self.per_frame[index]
        return self.shared


def _look_up(table: np.ndarray, first_mapped: int, values: np.ndarray) -> np.ndarray:
    """LUT output for each value: below the first mapped value the first entry, above the
    range the last (PS3.3 C.11.1.1 and C.11.2.1.1)."""
    index = np.clip(np.rint(values).astype(np.int64) - int(first_mapped), 0, len(table) - 1)
    return table[index].astype(np.float64)


# ----------------------------------------------------------------------------------- views ----

class View:
    """One way a reader sees one frame. `display` maps stored values to display values in units
    of the view's peak; `stored_span` is that peak in stored units (what noise strengths are
    relative to, and the peak reported beside a PSNR)."""

    kind = "view"

    def __init__(self, name: str, stored_span: float) -> None:
        self.name = name
        self.stored_span = float(stored_span)

    def display(self, stored: np.ndarray) -> np.ndarray:
        """A new array of `stored`'s shape (its callers may work in it)."""
        raise NotImplementedError

    def display_key(self) -> tuple | None:
        """A hashable value, equal for two views whose `display` maps every stored value alike
        (views of different frames often do: the same windows over the same modality
        transform), so that they may share one table of displays (`quality.DisplayTables`);
        None: shared with none. LUTs enter by identity: whoever keeps a key keeps the view, so
        that no other array takes that identity meanwhile."""
        return None

    def export_8bit(self, stored: np.ndarray) -> np.ndarray:
        """What a viewer's 8-bit export (PNG/JPEG/screenshot) through this view holds."""
        return np.clip(np.rint(np.clip(self.display(stored), 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class DataRangeView(View):
    """Modality values stretched from the original frame's minimum to its maximum: what a viewer
    shows when it windows to the data, and the scale of quantitative values (counts, HU, SUV).
    Pixels of the `padding` values (stored units, inclusive) are left out, as viewers leave them
    out; `stored_low` and `stored_high` are the range of the others in stored units."""

    kind = "data range"

    def __init__(self, modality: ModalityTransform, original: np.ndarray,
                 padding: tuple[int, int] | None = None) -> None:
        content = original
        if padding is not None:
            content = original[(original < padding[0]) | (original > padding[1])]
            if not content.size:  # all padding: nothing is shown but the background
                content = original
        values = modality.apply(content)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        self.modality = modality
        self.low = low
        self.padding = padding if content is not original else None
        self.stored_low, self.stored_high = (content.min(), content.max()) if content.size else (0, 0)
        # A constant frame has no range: one stored unit keeps the PSNR defined (and strict).
        one_unit = abs(modality.slope) if modality.is_linear else 1.0
        self.span = max(high - low, one_unit)
        stored_range = _span(content)
        super().__init__("data range", max(stored_range, 1.0))

    def display(self, stored: np.ndarray) -> np.ndarray:
        return (self.modality.apply(stored) - self.low) / self.span

    def display_key(self) -> tuple:
        return ("data range", self.modality.key(), self.low, self.span)

    def values_outside_range(self) -> tuple[tuple[int, int], ...]:
        """Runs (first, last, inclusive) of the stored values between `stored_low` and
        `stored_high` that the modality transform shows outside the range: only a Modality LUT
        that is not monotonic has any, and a pixel moved to one would widen the range a viewer
        windows to."""
        if self.modality.is_linear:
            return ()
        stored = np.arange(int(self.stored_low), int(self.stored_high) + 1)
        shown = self.modality.apply(stored)
        outside = stored[(shown < self.low) | (shown > self.low + self.span)]
        if not outside.size:
            return ()
        breaks = np.flatnonzero(np.diff(outside) > 1)
        return tuple(zip(np.r_[outside[0], outside[breaks + 1]].tolist(), np.r_[outside[breaks], outside[-1]].tolist()))


class VoiView(View):
    """A VOI window or LUT over the modality transform, display in [0, 1]."""

    kind = "window"

    def __init__(self, modality: ModalityTransform, voi: VoiTransform, original: np.ndarray) -> None:
        self.modality = modality
        self.voi = voi
        self.kind = "window" if isinstance(voi, VoiWindow) else "voi lut"
        window = window_in_stored_units(modality, voi)
        if window is not None:
            span = window[1]
        else:  # a LUT or a non-linear modality transform: the stored values the VOI spreads out
            span = _stored_span_of(lambda x: self.display(x), original)
        super().__init__(voi.describe(), span)

    def display(self, stored: np.ndarray) -> np.ndarray:
        return self.voi.apply(self.modality.apply(stored))

    def display_key(self) -> tuple:
        return ("voi", self.modality.key(), self.voi.key())


class StoredView(View):
    """Stored values against a fixed peak: how 8-bit PNG/JPEG/TIFF are viewed (peak 255), and the
    nominal peak 2^BitsStored − 1 (reported, binding only on request)."""

    kind = "stored"

    def __init__(self, peak: float, name: str | None = None, offset: float = 0.0) -> None:
        self.peak = float(peak)
        self.offset = float(offset)
        super().__init__(name or f"stored (peak {peak:g})", peak)

    def display(self, stored: np.ndarray) -> np.ndarray:
        return (stored.astype(np.float64) - self.offset) / self.peak

    def display_key(self) -> tuple:
        return ("stored", self.peak, self.offset)


def parse_window(text: str, what: str = "--window") -> tuple[float, float]:
    """A window written CENTER,WIDTH in modality units (HU for CT), as the command line and the
    `window8:C,W` attack take it; anything else is a one-line error naming `what`."""
    try:
        center, width = (float(part) for part in text.split(","))
    except ValueError:
        raise BadInputError(f"{what} takes CENTER,WIDTH in modality units (HU for CT), got {text!r}") from None
    if not (np.isfinite(center) and np.isfinite(width)) or width <= 0:
        raise BadInputError(f"{what}: the window needs a finite CENTER and a positive finite WIDTH")
    return center, width


def window_in_stored_units(modality: ModalityTransform, voi: VoiTransform) -> tuple[float, float] | None:
    """(centre, width) of a linear window in stored units, where the modality transform is linear."""
    if not isinstance(voi, VoiWindow) or not modality.is_linear or modality.slope == 0:
        return None
    return (voi.center - modality.intercept) / modality.slope, voi.width / abs(modality.slope)


def _stored_span_of(display, original: np.ndarray) -> float:
    """The span of stored values over which `display` rises from 1 % to 99 % of its range,
    searched over the original frame's own values (how wide the view is in stored units)."""
    if not original.size:
        return 1.0
    values = np.unique(original)
    shown = display(values)
    low, high = float(shown.min()), float(shown.max())
    if high <= low:
        return 1.0
    inside = values[(shown > low + 0.01 * (high - low)) & (shown < high - 0.01 * (high - low))]
    return max(_span(inside), 1.0)


def _span(values: np.ndarray) -> float:
    """max − min as a float (np.ptp wraps around in the input's integer type)."""
    return float(values.max()) - float(values.min()) if values.size else 0.0


def reader_views(image: Any, frame_index: int, extra_windows: tuple[VoiWindow, ...] = ()) -> list[View]:
    """Every view a reader uses for one frame of a `MedicalImage` (design §1), binding by default.

    8-bit PNG/JPEG/TIFF: the stored values, peak 255. Everything else: the frame's data range in
    modality values, every VOI window and LUT the file declares for the frame, for a CT also the
    standard windows of `CT_STANDARD_WINDOWS` (a reader switches to the bone or lung preset
    whatever the file declares), and `extra_windows` (the user's `--window`, modality units)."""
    original = image.pixels[frame_index]
    if image.kind != "dicom" and image.pixels.dtype.itemsize == 1:
        views: list[View] = [StoredView(255.0, offset=image.stored_min)]
        modality = ModalityTransform()
    else:
        frame = image.display.frame(frame_index)
        modality = frame.modality
        views = [DataRangeView(modality, original, image.display.padding)]
        vois: tuple[VoiTransform, ...] = frame.vois
        if (image.modality or "").upper() == "CT":
            declared = {(voi.center, voi.width) for voi in vois if isinstance(voi, VoiWindow)}
            vois += tuple(VoiWindow(c, w, label=name, origin="standard") for name, c, w in CT_STANDARD_WINDOWS
                          if (c, w) not in declared)
        views.extend(VoiView(modality, voi, original) for voi in vois)
        top = image.display.top_level
        if top is not None:
            # Over the frame's rescale (dcmtk takes that from the functional groups) and over
            # the top-level one (a reader that reads no functional groups).
            views.extend(VoiView(modality, voi, original) for voi in top.vois if voi not in frame.vois)
            if top.modality != modality:
                views.extend(VoiView(top.modality, voi, original) for voi in top.vois)
    views.extend(VoiView(modality, window, original) for window in extra_windows)
    return _uniquely_named(views)


def _uniquely_named(views: list[View]) -> list[View]:
    seen: dict[str, int] = {}
    for view in views:
        count = seen.get(view.name, 0)
        seen[view.name] = count + 1
        if count:
            view.name = f"{view.name} #{count + 1}"
    return views


def nominal_view(image: Any) -> StoredView:
    """Stored values against 2^BitsStored − 1 (PNG/TIFF: the dtype's maximum)."""
    return StoredView(image.nominal_peak, name=f"nominal (peak {image.nominal_peak:g})")


def stored_range_view(original: np.ndarray) -> DataRangeView:
    """Stored values against the original frame's own range (`--psnr-peak range`)."""
    view = DataRangeView(ModalityTransform(), original)
    view.name = "stored range"
    return view


# ------------------------------------------------------------------------ reading DICOM ----

def display_from_dicom(ds: Any, n_frames: int) -> Display:
    """The grayscale pipeline a DICOM dataset declares: top-level attributes, the shared
    functional groups of an enhanced multi-frame object, and per-frame groups where they differ."""
    top = _frame_display(ds, ds)
    shared_groups = _first_item(ds, "SharedFunctionalGroupsSequence")
    shared = _frame_display(shared_groups, ds, fallback=top) if shared_groups is not None else top
    per_frame_groups = ds.get("PerFrameFunctionalGroupsSequence")
    per_frame = None
    if per_frame_groups:
        per_frame = tuple(_frame_display(item, ds, fallback=shared) for item in list(per_frame_groups)[:n_frames])
        if all(frame == shared for frame in per_frame):
            per_frame = None
    # Top-level windows beside functional groups' own (an enhanced object converted from a
    # classic one keeps them; dcmtk shows them): measured too, wherever a frame's own differ.
    overridden = shared is not top or per_frame is not None
    return Display(shared, per_frame, top if overridden and top.vois else None, _padding(ds))


def _padding(ds: Any) -> tuple[int, int] | None:
    """Pixel Padding Value, through Pixel Padding Range Limit where there is one, in stored units
    (signed like the pixels: a value written as US above 2^15 over signed pixels is negative)."""
    value = _number(ds.get("PixelPaddingValue"))
    if value is None:
        return None
    limit = _number(ds.get("PixelPaddingRangeLimit"))
    ends = [int(value), int(value if limit is None else limit)]
    if _number(ds.get("PixelRepresentation")) == 1:
        ends = [end - 2**16 if end >= 2**15 else end for end in ends]
    return min(ends), max(ends)


def _frame_display(container: Any, ds: Any, fallback: FrameDisplay | None = None) -> FrameDisplay:
    """The modality transform and VOIs of `container`: a dataset, or a functional groups item
    whose Pixel Value Transformation and Frame VOI LUT sequences hold them."""
    fallback = fallback or FrameDisplay()
    if container is ds:
        modality_source, voi_source = ds, ds
    else:
        modality_source = _first_item(container, "PixelValueTransformationSequence")
        voi_source = _first_item(container, "FrameVOILUTSequence")
    modality = _modality_transform(modality_source, ds) if modality_source is not None else fallback.modality
    vois = _vois(voi_source, ds) if voi_source is not None else fallback.vois
    return FrameDisplay(modality, vois)


def _modality_transform(source: Any, ds: Any) -> ModalityTransform:
    lut_item = _first_item(ds, "ModalityLUTSequence") if source is ds else None
    if lut_item is not None:
        table, first, _, _ = _lut(lut_item, ds)
        if table is not None:
            if first >= 2**15 and _number(ds.get("PixelRepresentation")) == 1:
                # Signed stored values: the first one mapped is signed too (PS3.3 C.11.1.1.1), as
                # dcmtk reads it, though written as US (pydicom then maps every pixel to the first
                # entry: a flat image, which no mark can spoil).
                first -= 2**16
            return ModalityTransform(lut=table, lut_first=first)
    slope = _number(source.get("RescaleSlope"))
    intercept = _number(source.get("RescaleIntercept"))
    return ModalityTransform(1.0 if slope in (None, 0.0) else slope, 0.0 if intercept is None else intercept)


def _vois(source: Any, ds: Any) -> tuple[VoiTransform, ...]:
    vois: list[VoiTransform] = []
    centers = _numbers(source.get("WindowCenter"))
    widths = _numbers(source.get("WindowWidth"))
    labels = [str(v) for v in _values(source.get("WindowCenterWidthExplanation"))]
    function = str(source.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if function not in VOI_FUNCTIONS:
        function = "LINEAR"
    for index, (center, width) in enumerate(zip(centers, widths)):
        if center is None or width is None or not np.isfinite(center) or not np.isfinite(width) or width <= 0:
            continue
        if function == "LINEAR" and width < 1:
            continue  # PS3.3: a LINEAR width is at least 1; such a pair cannot be shown
        vois.append(VoiWindow(center, width, function, labels[index] if index < len(labels) else ""))
    for item in source.get("VOILUTSequence") or ():
        table, first, bits, longer = _lut(item, ds)
        if table is None:
            continue
        label = str(item.get("LUTExplanation", "") or "")
        firsts = [first]
        if first >= 2**15:
            # Modality values may be negative, and a first mapped value written as US above
            # 2^15 reads as negative to dcmtk and as itself to pydicom: both are views.
            firsts.append(first - 2**16)
        # Data longer than the descriptor's count: pydicom reads the count, dcmtk every entry.
        for entries in [table] + ([longer] if longer is not None else []):
            # A table whose entries use fewer bits than its descriptor says is shown over the
            # bits it uses by some viewers (dcmtk +Mv) and over the descriptor's by others.
            used = max(int(entries.max()).bit_length(), 1) if entries.size else bits
            for depth in [bits] + ([used] if used < bits else []):
                for mapped in firsts:
                    notes = [note for note, applies in (("first value signed", mapped != first),
                                                        (f"all {len(entries)} entries", entries is longer),
                                                        (f"{depth} bits used", depth != bits)) if applies]
                    vois.append(VoiLut(entries, mapped, depth, ", ".join(([label] if label else []) + notes)))
    return tuple(vois)


def _lut(item: Any, ds: Any) -> tuple[np.ndarray | None, int, int, np.ndarray | None]:
    """(table, first mapped value as written, output bits, the whole data where it holds more
    entries than the descriptor counts, else None) of a LUT item of `ds`, or (None, 0, 0, None)
    if unusable. LUT Data as OW bytes is in the file's byte order, an entry per 16-bit word (as
    pydicom and dcmtk read it), also when entries are 8 bits; 8-bit entries packed two to a
    word are read as bytes only when the data holds no more than one byte an entry."""
    descriptor = _values(item.get("LUTDescriptor"))
    data = item.get("LUTData")
    if len(descriptor) != 3 or data is None:
        return None, 0, 0, None
    entries, first, bits = (int(v) for v in descriptor)
    entries = entries or 65536  # PS3.3 C.11.1.1: 0 means 2^16 entries
    if isinstance(data, (bytes, bytearray)):
        if bits <= 8 and len(data) < 2 * entries:
            table = np.frombuffer(data, dtype="u1")
        else:
            table = np.frombuffer(data[: len(data) // 2 * 2], dtype="<u2" if _little_endian(item, ds) else ">u2")
    else:
        table = np.asarray(_values(data), dtype=np.float64)
    if table.size < 1:
        return None, 0, 0, None
    longer = np.asarray(table, dtype=np.float64) if table.size > entries else None
    return np.asarray(table[:entries], dtype=np.float64), first, bits, longer


def _little_endian(item: Any, ds: Any) -> bool:
    """Whether `item` of `ds` was read from little-endian bytes (what it was read as, else its
    file's transfer syntax; little-endian when neither says)."""
    for source in (item, ds):
        encoding = getattr(source, "original_encoding", None)
        if encoding and encoding[1] is not None:
            return bool(encoding[1])
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return str(syntax) != "1.2.840.10008.1.2.2"


def _first_item(container: Any, keyword: str) -> Any:
    try:
        sequence = container.get(keyword)
        return sequence[0] if sequence else None
    except (AttributeError, IndexError, TypeError, KeyError):
        return None


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def _number(value: Any) -> float | None:
    values = _numbers(value)
    return values[0] if values else None


def _numbers(value: Any) -> list[float | None]:
    numbers: list[float | None] = []
    for item in _values(value):
        try:
            numbers.append(float(item))
        except (TypeError, ValueError):
            numbers.append(None)
    return numbers
