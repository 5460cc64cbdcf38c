"""What a trained diagnostic classifier is, and how it scores images.

`wm evaluate --classifier` asks whether a frozen diagnostic classifier answers the same on
watermarked images as on the originals (design §6; the statistics are in `diagnostic.check`).
Scoring needs little of a classifier, and `Classifier` is just that: the findings it scores
(`label_names`), the side of its square inputs (`input_size`), how it reads intensities
(`intensity`), where it came from (`path`), `input_of` (one image's input, from
`diagnostic.inputs`) and `score_inputs(inputs) -> (N, K) probabilities`; `score_pixels` and
`score_images` do both steps for scripts. A file format is one subclass and one loader: here
`WmClassifier`, a folder written by `wm classifier train` (`diagnostic.training`):
`weights.safetensors` + `card.yaml`, read by `load_classifier`; a user's TorchScript, torch.export
or ONNX file with its card is `diagnostic.external`'s.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..io.medical_image import MedicalImage
from ..model.device import pick_device
from ..model.store import CARD_FILE, PICKLED_WEIGHT_SUFFIXES, WEIGHTS_FILE, load_safetensors, read_yaml_card
from .inputs import NOMINAL, Intensity, classifier_input

CARD_KIND = "diagnostic-classifier"


class Classifier(ABC):
    """A frozen classifier as scoring sees it: `score_*` give (N, K) sigmoid probabilities, one
    column per finding of `label_names`."""

    path: Path  # where it was loaded from; reports name it
    label_names: list[str]
    input_size: int  # it scores (N, input_size, input_size) inputs from `classifier_input`
    intensity: Intensity = NOMINAL  # how its inputs read stored values

    def input_of(self, pixels: np.ndarray, stored_range: tuple[int, int], modality=None) -> np.ndarray:
        """One image's (size, size) input in [0, 1]: `classifier_input` under this classifier's
        intensity (`modality`: the frame's modality transform, for a window in modality units)."""
        return classifier_input(pixels, stored_range, self.input_size, self.intensity, modality)

    def describe_input(self) -> str:
        """How an image becomes its input, for reports."""
        return f"1×{self.input_size}² inputs, {self.intensity.describe()}"

    def score_inputs(self, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """(N, size, size) preprocessed inputs (`classifier_input`) → (N, K) probabilities."""
        inputs = np.asarray(inputs, dtype=np.float32)
        if inputs.ndim != 3 or inputs.shape[1:] != (self.input_size, self.input_size):
            raise BadInputError(f"classifier inputs must be (N, {self.input_size}, {self.input_size}), got {inputs.shape}")
        if len(inputs) == 0:
            return np.zeros((0, len(self.label_names)), dtype=np.float64)
        return self._probabilities(inputs, batch_size)

    @abstractmethod
    def _probabilities(self, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        """(N ≥ 1, size, size) float32 inputs, already checked → (N, K) float64 probabilities,
        at most `batch_size` images at a time."""

    def score_pixels(self, pixels: Sequence[np.ndarray],
                     stored_ranges: Sequence[tuple[int, int]] | tuple[int, int],
                     batch_size: int = 64, modalities: Sequence | None = None) -> np.ndarray:
        """Stored pixel arrays ((frames, rows, cols) each, any sizes) → (N, K) probabilities.

        `stored_ranges`: one (stored_min, stored_max) per array, or one pair for all; for
        watermarked pixels, the original image's range (a marked image keeps its format).
        `modalities`: each middle frame's modality transform (None: stored values are modality values).
        """
        pixels = list(pixels)
        if len(stored_ranges) == 2 and all(isinstance(v, (int, np.integer)) for v in stored_ranges):
            stored_ranges = [tuple(stored_ranges)] * len(pixels)
        if len(stored_ranges) != len(pixels):
            raise BadInputError(f"{len(stored_ranges)} stored ranges for {len(pixels)} pixel arrays")
        modalities = list(modalities) if modalities is not None else [None] * len(pixels)
        scores = []
        for start in range(0, len(pixels), batch_size):  # preprocess a batch at a time: bounded memory
            batch = slice(start, start + batch_size)
            inputs = np.stack([self.input_of(p, r, m) for p, r, m in
                               zip(pixels[batch], stored_ranges[batch], modalities[batch])])
            scores.append(self.score_inputs(inputs, batch_size))
        return np.concatenate(scores) if scores else np.zeros((0, len(self.label_names)))

    def score_images(self, images: Sequence[MedicalImage], batch_size: int = 64) -> np.ndarray:
        """MedicalImages (as read from disk) → (N, K) probabilities."""
        return self.score_pixels([image.pixels for image in images],
                                 [(image.stored_min, image.stored_max) for image in images], batch_size,
                                 [image.display.frame(image.n_frames // 2).modality for image in images])


@dataclass
class WmClassifier(Classifier):
    """A classifier trained by `wm classifier train`: its network (`diagnostic.networks`), frozen
    on `device`, and its card."""

    network: object  # a networks.DiagnosticNetwork; typed loosely so this module imports without torch
    card: dict
    path: Path
    device: str = "cpu"

    @property
    def label_names(self) -> list[str]:
        return list(self.card["label_names"])

    @property
    def input_size(self) -> int:
        return int(self.card["architecture"]["input_size"])

    def _probabilities(self, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        import torch

        from .networks import predict_logits

        logits = predict_logits(self.network, torch.from_numpy(inputs).unsqueeze(1), self.device, batch_size)
        return torch.sigmoid(logits).double().numpy()


def read_classifier_card(folder: Path) -> dict:
    path = Path(folder) / CARD_FILE
    card = read_yaml_card(path, "classifier card")
    if card.get("kind") != CARD_KIND:
        raise BadInputError(f"{folder} is not a diagnostic classifier folder (card kind is not {CARD_KIND!r})")
    architecture = card.get("architecture")
    names = card.get("label_names")
    if not isinstance(architecture, dict) or not isinstance(names, list) or not names \
            or any(key not in architecture for key in ("arch", "outputs", "input_size")) \
            or int(architecture["outputs"]) != len(names):
        raise BadInputError(f"classifier card {path} lacks its architecture or label names")
    return card


def load_classifier(folder: str | Path, device: str = "cpu") -> WmClassifier:
    """The classifier written by `wm classifier train` to `folder`, frozen, on `device`."""
    from .networks import build_network

    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"classifier folder not found: {folder}")
    card = read_classifier_card(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLED_WEIGHT_SUFFIXES)
        found = f" (it has {', '.join(pickled)}: wm only loads safetensors weights)" if pickled else ""
        raise BadInputError(f"classifier {folder} has no {WEIGHTS_FILE}{found}")
    state = load_safetensors(weights, "classifier weights")
    device = pick_device(device).type
    network = build_network(str(card["architecture"]["arch"]), int(card["architecture"]["outputs"]))
    try:
        network.load_state_dict(state)
    except Exception as error:  # a damaged or mismatched file is bad input, not a crash
        raise BadInputError(f"cannot load classifier weights {weights}: {str(error).splitlines()[0]}") from None
    network.to(device).eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return WmClassifier(network, card, folder, device)
