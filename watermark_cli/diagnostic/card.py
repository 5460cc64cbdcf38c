"""The card of a user's own classifier: how an image becomes its input and what its outputs are.

A model file (TorchScript, torch.export or ONNX) says nothing about the pixels it was trained on,
so `wm evaluate --classifier FILE` needs `--classifier-card CARD.yaml`:

    input_size: 224                 # square side; the frame is letterboxed to it
    channels: 3                     # 1, or 3 with the gray repeated
    intensity: nominal              # nominal | range | {window: [C, W]} (modality units)
    normalize: {mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}   # optional; one or per channel
    output: logits                  # logits (a sigmoid per output) | probabilities
    labels: [nodule]                # one name per output (several: multi-label)

Each field is checked here, one line per problem naming the field; whether the card fits the model
is found by a dry run (`diagnostic.external`) before any image is scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..model.store import read_yaml_card
from .inputs import INTENSITY_KINDS, Intensity

OUTPUT_KINDS = ("logits", "probabilities")
CARD_FIELDS = ("input_size", "channels", "intensity", "normalize", "output", "labels")
MAX_INPUT_SIZE = 2048


@dataclass(frozen=True)
class ClassifierCard:
    input_size: int
    channels: int
    intensity: Intensity
    mean: tuple[float, ...]  # one value, or one per channel
    std: tuple[float, ...]
    output: str
    labels: tuple[str, ...]
    path: Path

    def normalised(self, unit_inputs: np.ndarray) -> np.ndarray:
        """(N, size, size) inputs in [0, 1] → (N, channels, size, size) float32, as the model takes them."""
        batch = np.repeat(unit_inputs[:, np.newaxis], self.channels, axis=1).astype(np.float32)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return (batch - mean) / std

    def describe(self) -> str:
        return (f"{self.channels}×{self.input_size}² inputs, {self.intensity.describe()}, "
                f"{self.output}, labels {', '.join(self.labels)}")


def read_classifier_model_card(path: str | Path) -> ClassifierCard:
    """The card at `path`, every field checked (BadInputError: one line, naming the field)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"classifier card not found: {path}")
    card = read_yaml_card(path, "classifier card")
    unknown = sorted(set(card) - set(CARD_FIELDS) - {"name", "description"})
    if unknown:
        raise BadInputError(f"classifier card {path}: unknown field(s) {', '.join(unknown)} "
                            f"(it takes {', '.join(CARD_FIELDS)})")
    missing = [name for name in ("input_size", "labels") if name not in card]
    if missing:
        raise BadInputError(f"classifier card {path} lacks {', '.join(missing)}")

    def problem(field: str, text: str) -> BadInputError:
        return BadInputError(f"classifier card {path}: {field} {text}")

    size = card["input_size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= MAX_INPUT_SIZE:
        raise problem("input_size", f"must be a whole number of pixels from 8 to {MAX_INPUT_SIZE}, got {size!r}")
    channels = card.get("channels", 1)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise problem("channels", f"must be 1 or 3, got {channels!r}")
    intensity = _intensity(card.get("intensity", "nominal"), problem)
    mean, std = _normalisation(card.get("normalize"), channels, problem)
    output = card.get("output", "logits")
    if output not in OUTPUT_KINDS:
        raise problem("output", f"must be logits or probabilities, got {output!r}")
    labels = card["labels"]
    if isinstance(labels, str):
        labels = [labels]
    if not isinstance(labels, list) or not labels or not all(isinstance(n, (str, int)) and str(n) for n in labels):
        raise problem("labels", "must name each output (a list of names)")
    if len({str(n) for n in labels}) != len(labels):
        raise problem("labels", "names must differ")
    return ClassifierCard(size, channels, intensity, mean, std, output, tuple(str(n) for n in labels), path)


def _intensity(value, problem) -> Intensity:
    if isinstance(value, str) and value in ("nominal", "range"):
        return Intensity(value)
    window = value.get("window") if isinstance(value, dict) and set(value) == {"window"} else None
    if window is None:
        raise problem("intensity", f"must be {' | '.join(k for k in INTENSITY_KINDS if k != 'window')} or "
                                   f"{{window: [centre, width]}}, got {value!r}")
    if (not isinstance(window, list) or len(window) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window)):
        raise problem("intensity", f"window must be [centre, width] in modality units, got {window!r}")
    try:
        return Intensity("window", (float(window[0]), float(window[1])))
    except BadInputError as error:
        raise problem("intensity", str(error)) from None


def _normalisation(value, channels: int, problem) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if value is None:
        return (0.0,), (1.0,)
    if not isinstance(value, dict) or set(value) != {"mean", "std"}:
        raise problem("normalize", f"must be {{mean: ..., std: ...}}, got {value!r}")
    pair = []
    for name in ("mean", "std"):
        numbers = value[name] if isinstance(value[name], list) else [value[name]]
        if (len(numbers) not in (1, channels)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in numbers)):
            raise problem("normalize", f"{name} must be one number or one per channel ({channels}), got {value[name]!r}")
        pair.append(tuple(float(v) for v in numbers))
    if any(v <= 0 for v in pair[1]):
        raise problem("normalize", f"std must be positive, got {value['std']!r}")
    return pair[0], pair[1]
