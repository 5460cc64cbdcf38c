"""The networks of the diagnostic classifier, and the local weights they may start from.

Trained from scratch: a small CNN that learns on a CPU in a few minutes (default), or
torchvision's ResNet-18 / DenseNet-121 with one input channel (for a GPU). Every network first
standardises each image to zero mean and unit variance, so a CT whose anatomy spans a few
hundred of 65536 stored values and a full-range PNG look alike to it. `load_initial_weights`
starts a network from local pretrained weights (`--weights`; nothing is ever downloaded), read
as tensors only.

This module imports torch at import time (its classes are torch modules): the rest of
`diagnostic` imports it inside the functions that build or run a network. The attribute names
below are the keys of every classifier's `weights.safetensors`: renaming one orphans the
classifier folders already written.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..errors import BadInputError
from ..hashing import file_sha256
from ..model.store import load_safetensors, load_torch_tensors

ARCHITECTURES = ("small", "resnet18", "densenet121")


class PerImageStandardisation(nn.Module):
    """Zero mean, unit variance per image: the network ignores the stored range's scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        return (x - mean) / (std + 1e-4)


class DiagnosticNetwork(nn.Module):
    """Standardisation, then the backbone: (N, 1, S, S) inputs → (N, K) logits."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.standardise = PerImageStandardisation()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.standardise(x))


class SmallLesionCNN(nn.Module):
    """Five conv stages, each halving the resolution (128² → 4²), then global average AND max
    pooling: a small lesion lights up a few positions, which the max keeps and a mean dilutes.
    About 20 M multiply-adds per 128² image: an epoch of 400 images takes seconds on a CPU."""

    def __init__(self, n_outputs: int):
        super().__init__()
        widths = (1, 8, 16, 32, 64, 128)
        layers = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * widths[-1], n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)


def build_network(arch: str, n_outputs: int) -> DiagnosticNetwork:
    """A network of `arch` with 1 input channel and `n_outputs` logits, randomly initialised."""
    if arch == "small":
        backbone = SmallLesionCNN(n_outputs)
    elif arch == "resnet18":
        import torchvision  # imported here only: it costs seconds, and only these archs need it

        backbone = torchvision.models.resnet18(weights=None, num_classes=n_outputs)
        backbone.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    elif arch == "densenet121":
        import torchvision

        backbone = torchvision.models.densenet121(weights=None, num_classes=n_outputs)
        backbone.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    else:
        raise BadInputError(f"unknown classifier architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return DiagnosticNetwork(backbone)


def predict_logits(network: nn.Module, inputs: torch.Tensor, device: str, batch_size: int = 64) -> torch.Tensor:
    """(N, K) float32 logits on the CPU of (N, 1, S, S) inputs, in eval mode, a batch at a time."""
    network.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            chunks.append(network(inputs[start : start + batch_size].to(device)).float().cpu())
    return torch.cat(chunks)


# ===================================================================== initial weights ====


_LEGACY_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _read_weights_file(path: Path) -> dict:
    """A state dict from a safetensors file or a torch file (plain, or under 'state_dict'/'model')."""
    if not path.is_file():
        raise BadInputError(f"--weights: no such file: {path}")
    # Tensors only, either way: a pickle that would run code is refused unread.
    if path.suffix == ".safetensors":
        state = load_safetensors(path, "--weights")
    else:
        state = load_torch_tensors(path, "--weights")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInputError(f"--weights {path}: not a state dict of tensors")
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        match = _LEGACY_DENSENET_KEY.match(key)  # old torchvision DenseNet files name 'norm.1'
        cleaned[match.group(1) + match.group(2) if match else key] = value
    return cleaned


def load_initial_weights(network: DiagnosticNetwork, path: Path) -> dict:
    """Copy every tensor of `path` that fits the network's backbone; a 3-channel first conv is
    summed over its colour channels (a gray image then excites it as the RGB net's gray input
    would). A head of another size (e.g. 1000 ImageNet classes) is left at its random start.
    BadInputError when under half of the backbone's tensors fit (the file is for another arch)."""
    source = _read_weights_file(path)
    target = network.backbone.state_dict()
    loaded, skipped = {}, []
    for key, value in target.items():
        incoming = source.get(key)
        if incoming is None:
            skipped.append(key)
            continue
        if incoming.shape != value.shape and incoming.ndim == 4 and incoming.shape[1] == 3 and value.shape[1] == 1 \
                and incoming.shape[0] == value.shape[0] and incoming.shape[2:] == value.shape[2:]:
            incoming = incoming.sum(dim=1, keepdim=True)
        if incoming.shape != value.shape:
            skipped.append(key)
            continue
        loaded[key] = incoming.to(value.dtype)
    if len(loaded) < len(target) / 2:
        raise BadInputError(f"--weights {path}: only {len(loaded)} of {len(target)} tensors fit this architecture")
    network.backbone.load_state_dict(loaded, strict=False)
    return {"path": path.name, "sha256": file_sha256(path), "tensors_loaded": len(loaded),
            "tensors_left_random": skipped}
