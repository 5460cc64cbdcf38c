"""A user's own classifier, from a model file and its card: TorchScript, torch.export or ONNX.

`wm evaluate --classifier FILE --classifier-card CARD.yaml` scores images with the model a
hospital or a research group already has. The file holds the network; the card
(`diagnostic.card`) says how an image becomes its input and what its outputs mean. Formats, by
suffix:

- `.pt`, `.ts`: TorchScript (`torch.jit.save`; MONAI bundles ship `model.ts`), run by torch;
- `.pt2`: a `torch.export` program (`torch.export.save`), run by torch. torch's loader would
  unpickle anything in the archive; wm lets it read tensors only (`torch.load(weights_only=True)`)
  and refuses the archive's pickled custom objects, so a `.pt2` runs no code but its graph;
- `.onnx`: run by onnxruntime (the optional extra `pip install 'wm[onnx]'`).

A program exported for one batch size (torch.export and ONNX keep the example's) is fed batches
of exactly that size, the last one padded. Before any image is scored, a dry run feeds the model
two inputs shaped as the card says and checks what comes back (one row per input, one column per
label, finite, and in [0, 1] for `probabilities`): a card that does not fit its model is a
one-line error, not a failure halfway through an evaluation.
"""

from __future__ import annotations

import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..io.medical_image import one_line
from ..model.device import pick_device
from .card import ClassifierCard, read_classifier_model_card
from .classifier import Classifier, load_classifier
from .inputs import Intensity

MODEL_FORMATS = {".pt": "TorchScript", ".ts": "TorchScript", ".pt2": "torch.export", ".onnx": "ONNX"}
_DRY_RUN_INPUTS = 2


class ModelRuntime:
    """One loaded model file: `run` takes (B, C, S, S) float32 and returns its raw output as numpy."""

    fixed_batch: int | None = None  # the only batch size the program takes, where it has one
    input_shape: tuple | None = None  # (C, S, S) as the file declares it, where it does

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _TorchRuntime(ModelRuntime):
    def __init__(self, module, device) -> None:
        self.module, self.device = module, device

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            output = self.module(torch.from_numpy(batch).to(self.device))
        if isinstance(output, (tuple, list)) and len(output) == 1:
            output = output[0]
        if not isinstance(output, torch.Tensor):
            raise BadInputError(f"the model returns a {type(output).__name__}, not one tensor of scores")
        return output.detach().float().cpu().numpy()


def _torchscript(path: Path, device) -> ModelRuntime:
    import warnings

    import torch

    with warnings.catch_warnings():  # torch deprecates TorchScript; MONAI bundles still ship it
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location=device)
    module.eval()
    return _TorchRuntime(module, device)


@contextmanager
def _tensors_only_unpickling():
    """While torch.export.load reads an archive: every torch.load reads tensors only, and the
    archive's pickled custom objects are refused (a classifier has none)."""
    import torch
    from torch.export.pt2_archive import _package

    def load_tensors_only(source, *args, **kwargs):
        kwargs["weights_only"] = True
        return original_load(source, *args, **kwargs)

    def refuse(*_args, **_kwargs):
        raise BadInputError("the archive holds pickled objects, which wm does not unpickle")

    class _NoPickle:
        loads = staticmethod(refuse)

    original_load, original_obj = torch.load, torch._C._pickle_load_obj
    torch.load, torch._C._pickle_load_obj, _package.pickle = load_tensors_only, refuse, _NoPickle
    try:
        yield
    finally:
        torch.load, torch._C._pickle_load_obj, _package.pickle = original_load, original_obj, pickle


def _exported_program(path: Path, device) -> ModelRuntime:
    import torch

    with _tensors_only_unpickling():
        program = torch.export.load(str(path))
    runtime = _TorchRuntime(program.module().to(device), device)
    user_inputs = set(program.graph_signature.user_inputs)
    shapes = [tuple(node.meta["val"].shape) for node in program.graph.nodes
              if node.op == "placeholder" and node.name in user_inputs and "val" in node.meta]
    if len(shapes) != 1:
        raise BadInputError(f"the program takes {len(shapes)} inputs; a classifier takes one image batch")
    runtime.fixed_batch, runtime.input_shape = _static_batch_and_shape(shapes[0])
    return runtime


def _static_batch_and_shape(shape: tuple) -> tuple[int | None, tuple | None]:
    """(the batch size if it is fixed, (C, S, S) where every one is a number) of a declared shape."""
    if len(shape) != 4:
        return None, None
    fixed = [value if isinstance(value, int) else None for value in shape]
    return fixed[0], (tuple(fixed[1:]) if None not in fixed[1:] else None)


@dataclass
class _OnnxRuntime(ModelRuntime):
    session: object
    input_name: str
    fixed_batch: int | None = None
    input_shape: tuple | None = None

    def run(self, batch: np.ndarray) -> np.ndarray:  # the first output holds the scores
        return np.asarray(self.session.run(None, {self.input_name: batch})[0])


def _onnx(path: Path, device) -> ModelRuntime:
    try:
        import onnxruntime
    except ImportError:
        raise BadInputError("ONNX classifiers need onnxruntime: pip install 'wm[onnx]'") from None
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise BadInputError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        providers.insert(0, "CUDAExecutionProvider")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are not ours to print
    session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise BadInputError(f"the model takes {len(inputs)} inputs; a classifier takes one image batch")
    fixed_batch, shape = _static_batch_and_shape(tuple(inputs[0].shape))
    return _OnnxRuntime(session, inputs[0].name, fixed_batch, shape)


_LOADERS = {"TorchScript": _torchscript, "torch.export": _exported_program, "ONNX": _onnx}


@dataclass
class ExternalClassifier(Classifier):
    """A model file run through its card: inputs from `classifier_input` under the card's
    intensity, repeated to its channels and normalised, then (N, K) probabilities."""

    runtime: ModelRuntime
    card: ClassifierCard
    path: Path
    model_format: str

    @property
    def label_names(self) -> list[str]:
        return list(self.card.labels)

    @property
    def input_size(self) -> int:
        return self.card.input_size

    @property
    def intensity(self) -> Intensity:
        return self.card.intensity

    def describe_input(self) -> str:
        return f"{self.model_format} model, {self.card.describe()}"

    def _probabilities(self, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        step = self.runtime.fixed_batch or batch_size
        rows = []
        for start in range(0, len(inputs), step):
            chunk = self.card.normalised(inputs[start : start + step])
            count = len(chunk)
            if self.runtime.fixed_batch and count < step:  # the program's one batch size: pad, then drop
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - count, axis=0)])
            try:
                raw = self.runtime.run(np.ascontiguousarray(chunk))
            except BadInputError:
                raise
            except Exception as error:  # the runtime's own error: one line, not its traceback
                raise BadInputError(f"classifier {self.path.name} failed on its inputs: {one_line(error)}") from None
            rows.append(self._scores(raw, len(chunk))[:count])
        return np.concatenate(rows)

    def _scores(self, raw: np.ndarray, batch: int) -> np.ndarray:
        """The model's raw output for `batch` inputs → (batch, K) probabilities, checked."""
        k = len(self.card.labels)
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim == 1 and k == 1:
            raw = raw[:, np.newaxis]
        if raw.ndim != 2 or raw.shape != (batch, k):
            raise BadInputError(f"classifier {self.path.name} returns shape {tuple(raw.shape)} for {batch} inputs; "
                                f"its card's {k} label(s) want ({batch}, {k})")
        if not np.isfinite(raw).all():
            raise BadInputError(f"classifier {self.path.name} returns NaN or infinite scores")
        if self.card.output == "probabilities":
            if raw.min() < -1e-6 or raw.max() > 1 + 1e-6:
                raise BadInputError(f"classifier {self.path.name} returns values outside [0, 1] "
                                    f"({raw.min():.3g} to {raw.max():.3g}) but its card says probabilities: "
                                    "say `output: logits`")
            return np.clip(raw, 0.0, 1.0)
        from scipy.special import expit

        return expit(raw)


def load_external_classifier(model_file: str | Path, card_file: str | Path,
                             device: str = "cpu") -> ExternalClassifier:
    """The model in `model_file` (format by suffix), read through `card_file`, dry-run."""
    model_file = Path(model_file)
    model_format = MODEL_FORMATS.get(model_file.suffix.lower())
    if model_format is None:
        raise BadInputError(f"classifier {model_file}: not a model file wm runs (suffixes "
                            f"{', '.join(MODEL_FORMATS)}; or a folder from `wm classifier train`)")
    if not model_file.is_file():
        raise BadInputError(f"classifier not found: {model_file}")
    card = read_classifier_model_card(card_file)
    torch_device = pick_device(device)
    try:
        runtime = _LOADERS[model_format](model_file, torch_device)
    except BadInputError as error:
        raise BadInputError(f"cannot load {model_format} classifier {model_file}: {error}") from None
    except Exception as error:  # a damaged or foreign file: one line, not the loader's traceback
        raise BadInputError(f"cannot load {model_file} as a {model_format} model: {one_line(error)}") from None
    wanted = (card.channels, card.input_size, card.input_size)
    if runtime.input_shape is not None and runtime.input_shape != wanted:
        raise BadInputError(f"classifier {model_file.name} takes {'×'.join(map(str, runtime.input_shape))} inputs; "
                            f"its card {card.path.name} says {'×'.join(map(str, wanted))} (channels × size × size)")
    classifier = ExternalClassifier(runtime, card, model_file, model_format)
    dry_run = np.random.default_rng(0).random((_DRY_RUN_INPUTS, card.input_size, card.input_size), dtype=np.float32)
    try:
        classifier.score_inputs(dry_run)
    except BadInputError as error:
        raise BadInputError(f"classifier {model_file.name} does not fit its card {card.path.name}: {error}") from None
    return classifier


def open_classifier(path: str | Path, card_file: str | Path | None = None, device: str = "cpu") -> Classifier:
    """What `--classifier` names: a folder from `wm classifier train` (it carries its own card), or
    a model file with `card_file`."""
    path = Path(path)
    if path.is_dir():
        if card_file is not None:
            raise BadInputError(f"{path} is a wm classifier folder, which carries its own card: "
                                "--classifier-card is for a model file")
        return load_classifier(path, device)
    if card_file is None:
        raise BadInputError(f"classifier {path}: a model file needs --classifier-card CARD.yaml "
                            "(input size, channels, intensity, normalisation, output, labels)")
    return load_external_classifier(path, card_file, device)
