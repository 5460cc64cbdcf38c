"""A model on disk: a folder with `weights.safetensors` and `card.yaml`.

The card is the model's passport (videoseal-style): architecture, payload layout and capacity,
the floor it was trained for, the training configuration and data, and measured figures. Loading
needs only the card's `architecture` and `payload` blocks; everything else is for people.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import BadInputError
from ..hashing import file_sha256
from ..io.writing import write_atomically

WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "card.yaml"
DEFAULT_MODEL_NAME = "default"
# Weights in formats wm never loads from a model folder: pickles (torch.save, joblib, ...) can run code.
PICKLED_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib")


def shipped_models_folder() -> Path:
    """The shipped models: the checkout's top-level `models/` folder, installed as the package
    data of `watermark_cli.shipped_models` (so a plain install has them too); WM_MODELS overrides it."""
    override = os.environ.get("WM_MODELS")
    if override:
        return Path(override)
    from importlib.resources import files

    return Path(str(files("watermark_cli.shipped_models")))


def resolve_model_path(name_or_path: str | None) -> Path:
    """A model folder from a path, or from a name under the shipped models folder."""
    candidate = Path(name_or_path) if name_or_path else None
    if candidate is not None and candidate.is_dir():
        _refuse_pickled_weights(candidate)
    if candidate is not None and (candidate / CARD_FILE).is_file():
        return candidate
    name = name_or_path or DEFAULT_MODEL_NAME
    shipped = shipped_models_folder() / name
    if (shipped / CARD_FILE).is_file():
        return shipped
    if name_or_path is None:
        raise BadInputError(f"no default model in {shipped_models_folder()}; pass --model PATH (see `wm train`)")
    raise BadInputError(f"no model at {name_or_path} (expected a folder with {CARD_FILE} and {WEIGHTS_FILE})")


def _refuse_pickled_weights(folder: Path) -> None:
    """BadInputError for a model folder whose weights are only in a pickle format (weights.pt,
    model.pth, pytorch_model.bin, ...): wm loads safetensors weights only, and nothing else in
    such a folder is opened."""
    if (folder / WEIGHTS_FILE).exists():
        return
    try:
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLED_WEIGHT_SUFFIXES)
    except OSError:
        return  # an unreadable folder: the card or weights check that follows names it
    if pickled:
        raise BadInputError(f"model {folder} has {', '.join(pickled)} but no {WEIGHTS_FILE}: wm only loads "
                            "safetensors weights (pickle files can run code; nothing in it was loaded)")


def check_safetensors_file(path: Path, what: str) -> None:
    """BadInputError unless `path` is a file that starts as a safetensors file does: an 8-byte
    little-endian header length that fits the file, then a JSON object. Checked before any
    library sees the file, so a pickle (what `torch.save` writes), a zip, random bytes or an
    empty file are refused by name and never parsed."""
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"{what} {path} is a folder, not a safetensors file")
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(9)
    except OSError as error:
        raise BadInputError(f"cannot read {what} {path}: {error.strerror or error}") from None
    length = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if len(head) == 9 and 2 <= length <= size - 8 and head[8:9] == b"{":
        return
    if size == 0:
        found = "an empty file"
    elif head.startswith(b"PK\x03\x04"):
        found = "a zip archive, e.g. what torch.save writes"
    elif head[:1] == b"\x80":
        found = "a Python pickle"
    else:
        found = "unrecognised content"
    raise BadInputError(f"{what} {path} is not a safetensors file ({found}); wm only loads safetensors weights")


def load_safetensors(path: Path, what: str, device: str = "cpu") -> dict:
    """The tensors of the safetensors file `path` (checked first by `check_safetensors_file`);
    a damaged one is a one-line BadInputError naming it."""
    from safetensors.torch import load_file

    check_safetensors_file(path, what)
    try:
        return load_file(str(path), device=device)
    except Exception as error:  # safetensors' errors on a damaged file are bad input, not a crash
        raise BadInputError(f"{what} {path} is not a valid safetensors file: {_first_line(error)}") from None


def load_torch_tensors(path: Path, what: str, allowed_globals: tuple = ()) -> object:
    """What `torch.save` wrote to `path`, read with torch's weights-only unpickler: tensors and
    plain containers (plus `allowed_globals`), never an arbitrary object, so loading runs no
    code from the file. Anything else is a one-line BadInputError naming the file."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allowed_globals)):
            warnings.simplefilter("ignore")  # e.g. torch's note on a pickle protocol: not for the user
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # whatever torch raises on a foreign or damaged file is bad input
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused:
            raise BadInputError(f"{what} {path} holds Python objects ({refused.group(1)}), not only tensors; "
                                "refused without running them (wm never unpickles code)") from None
        if "Weights only load failed" in str(error):
            raise BadInputError(f"{what} {path} is not a torch file of tensors (refused unread: wm never "
                                "unpickles code)") from None
        raise BadInputError(f"{what} {path} is not a readable torch file: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    """The first line of a library's error, without colour codes or a C++ "[enforce fail at …]"
    prefix (which the terminal's markup would swallow anyway)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    text = re.sub(r"^\[[^\]]*\][\s.]*", "", text)
    return text.splitlines()[0] if text else type(error).__name__


@dataclass
class LoadedModel:
    model: "object"  # WatermarkModel; typed loosely so this module imports without torch
    card: dict
    path: Path
    weights_sha256: str

    @property
    def name(self) -> str:
        return str(self.card.get("name", self.path.name))

    @property
    def payload_format(self) -> int:
        """The payload layout the card declares: 2 (authenticated, `payload.PayloadCodec`), or 1
        for cards written before it (`payload.LegacyPayloadCodec`)."""
        return int(self.card["payload"].get("format", 1))

    @property
    def legacy_parity_bytes(self) -> int | None:
        """Format 1's Reed-Solomon parity of marks this model wrote before payload v2, if any."""
        payload = self.card["payload"]
        legacy = payload.get("format_1") or (payload if self.payload_format == 1 else None)
        return int(legacy["parity_bytes"]) if legacy else None

    @property
    def n_bits(self) -> int:
        return int(self.card["architecture"]["n_bits"])

    @property
    def keyed(self) -> bool:
        return is_keyed(self.card)

    @property
    def device(self):
        """Where the networks are (`wm … --device`), a torch device: their inputs go there, and
        what they return comes back to the CPU, where the guard, the payload and the searches work."""
        return next(self.model.parameters()).device

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def move_to(self, device: str) -> "LoadedModel":
        """Its networks moved to `device` ('cpu', 'cuda:0': `device.model_device`), in place."""
        import torch

        if self.device != torch.device(device):
            self.model.to(device)
        return self

    @property
    def reads_marks_of(self) -> list[str]:
        """Older shipped models whose marks this one reads too (its card's `reads_marks_of`)."""
        names = self.card.get("reads_marks_of") or []
        return [str(name) for name in names] if isinstance(names, list) else []

    @property
    def trained_floor_db(self) -> float | None:
        """The PSNR floor the model was trained for (its card's), None when the card does not say."""
        value = (self.card.get("quality_floor") or {}).get("psnr_min_db")
        return float(value) if value is not None else None


def is_keyed(card: dict) -> bool:
    """Whether a model's marks depend on the key (model/key_field.py): without the key they cannot
    be read, rebuilt or copied. An unkeyed model's marks protect nothing but the payload."""
    return float(card["architecture"].get("key_field_sigma", 0) or 0) > 0


def save_model(folder: Path, network, card: dict, *, half_precision: bool = True,
               record_weights_hash: bool = False) -> None:
    """Weights (`weights.safetensors`) and card (`card.yaml`) of any network, each written
    atomically, weights first: a card on disk always describes weights that are there.

    `half_precision`: floating-point tensors stored as float16 (the watermarking model: half the
    size in git, and the decoder's correlations do not notice; loading casts back to float32 and
    the figures in a card are measured on the saved weights). `record_weights_hash`: the card
    gets `weights_sha256` (the classifier's card, which a report cites)."""
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    state = {key: (value.half() if half_precision and value.is_floating_point() else value).detach().cpu().contiguous()
             for key, value in network.state_dict().items()}
    weights = save(state)
    write_atomically(folder / WEIGHTS_FILE, weights)
    if record_weights_hash:
        card["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    write_card(folder, card)


def write_card(folder: Path, card: dict) -> None:
    write_atomically(folder / CARD_FILE, yaml.safe_dump(card, sort_keys=False, allow_unicode=True))


def read_yaml_card(path: Path, what: str) -> dict:
    """A YAML card as a mapping, or a one-line BadInputError naming `what` it should have been."""
    try:
        card = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise BadInputError(f"cannot read {what} {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(card, dict):
        raise BadInputError(f"{what} {path} is not a YAML mapping")
    return card


def read_card(folder: Path) -> dict:
    card = read_yaml_card(folder / CARD_FILE, "model card")
    if not isinstance(card.get("architecture"), dict) or not isinstance(card.get("payload"), dict):
        raise BadInputError(f"model card {folder / CARD_FILE} lacks its architecture or payload block")
    needed = [("architecture", "n_bits"), ("payload", "raw_bits"), ("payload", "capacity_bytes")]
    if int(card["payload"].get("format", 1)) == 1:
        needed.append(("payload", "parity_bytes"))
    missing = [key for block, key in needed if key not in card[block]]
    if missing:
        raise BadInputError(f"model card {folder / CARD_FILE} lacks {', '.join(missing)}")
    return card


def load_model(name_or_path: str | None, device: str = "cpu") -> LoadedModel:
    import torch

    from .networks import NetworkConfig, WatermarkModel

    folder = resolve_model_path(name_or_path)
    _refuse_pickled_weights(folder)
    card = read_card(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise BadInputError(f"model {folder} has no {WEIGHTS_FILE}")
    state = load_safetensors(weights, "model weights", device=device)
    try:
        architecture = {k: v for k, v in card["architecture"].items() if k != "type"}
        model = WatermarkModel(NetworkConfig(**architecture))
        model.load_state_dict(state)
    except Exception as error:  # mismatched weights or card are bad input, not a crash
        raise BadInputError(f"cannot load model weights {weights}: {_first_line(error)}") from None
    # Channels-last convolution weights: on a CPU, oneDNN then runs the 16-channel convolutions
    # of both networks about 2.5× faster (512² CT: encoder ~50 → ~20 ms); values agree to 1e-6.
    model.eval().to(device, memory_format=torch.channels_last)
    return LoadedModel(model=model, card=card, path=folder, weights_sha256=file_sha256(weights))
