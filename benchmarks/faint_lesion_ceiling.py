"""How visible the faint-brain lesions are at all: a detector told where every training lesion is.

    .venv/bin/python benchmarks/faint_lesion_ceiling.py [--steps 2400] [--n-train 480] [--n-test 400]

The shipped classifier recipe learns from image labels alone and stays at chance on
`wm data lesions --task faint-brain` (benchmarks/classifier_recipe.py). This asks whether any
small network could do better on this machine, by giving it far more than a label: the lesion's
centre (manifest.csv). A fully convolutional detector (about 30 k weights, a 4x-downsampled
heat map, receptive field about 60 px) is trained on 48-px patches: positives centred near a
lesion; negatives at random places in the brain of lesion-free images, at the lesion's own place
in its lesion-free twin (the same background variant), and, every 200 steps, at the places where
the detector fires highest on lesion-free training images (hard negatives). Two figures on the
held-out split (other slices, another seed), each with a bootstrap 95 % interval:

- local AUROC: the detector's peak in the 48-px patch at the lesion's centre, against the same
  patch of the lesion-free twin: how well it tells a lesion from the anatomy it lies on, when it
  is told where to look;
- image AUROC: the peak of the heat map over the whole image, lesion-free images against
  lesioned ones: the classifier task of issue 15, for which the target is 0.85.

A local AUROC well below 1 leaves the image AUROC near chance: one image holds hundreds of
places like the lesion's, and its peak is the highest of them.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np

from watermark_cli.data.faint_lesions import FaintLesionConfig, brain_mask, write_faint_lesion_dataset
from watermark_cli.diagnostic.check import auroc, paired_bootstrap
from watermark_cli.diagnostic.inputs import read_inputs
from watermark_cli.diagnostic.labels import read_labels

PATCH = 48
BATCH = 64


def _split(folder: Path) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(inputs as the classifier sees them, labels, manifest rows) of a written split."""
    labelled = read_labels(folder / "labels.csv")
    rows = {row["path"]: row for row in csv.DictReader(open(folder / "manifest.csv", encoding="utf-8"))}
    return (read_inputs(labelled.paths, None), labelled.targets[:, 0],
            [rows[path.name] for path in labelled.paths])


def _twins(rows: list[dict]) -> dict[int, int]:
    """Each lesioned image's index → its lesion-free twin's (same pair)."""
    by_pair: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_pair.setdefault(row["pair"], []).append(i)
    return {i: j for members in by_pair.values() if len(members) == 2
            for i in members for j in members if i != j and rows[i]["label"] == "1"}


def _detector():
    from torch import nn

    def stage(cin, cout, dilation=1):
        return [nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True)]

    class Detector(nn.Module):
        def __init__(self, width: int = 16):
            super().__init__()
            self.layers = nn.Sequential(*stage(1, width), nn.MaxPool2d(2), *stage(width, 2 * width), nn.MaxPool2d(2),
                                        *stage(2 * width, 2 * width), *stage(2 * width, 4 * width, 2),
                                        *stage(4 * width, 4 * width, 4), nn.Conv2d(4 * width, 1, 1))

        def forward(self, x):  # per-image standardisation, as the classifier recipe's networks
            mean, std = x.mean(dim=(1, 2, 3), keepdim=True), x.std(dim=(1, 2, 3), keepdim=True)
            return self.layers((x - mean) / (std + 1e-4))[:, 0]

    return Detector()


def measure(steps: int, n_train: int, n_test: int, folder: Path, seed: int = 0) -> dict:
    import torch
    from scipy import ndimage

    write_faint_lesion_dataset(folder / "train", FaintLesionConfig("train", n_train, 0))
    write_faint_lesion_dataset(folder / "held_out", FaintLesionConfig("held_out", n_test, 1))
    x, y, rows = _split(folder / "train")
    tx, ty, trows = _split(folder / "held_out")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    half = PATCH // 2
    padded = np.pad(x, ((0, 0), (half, half), (half, half)), mode="reflect")
    twin = _twins(rows)
    lesioned = sorted(twin)
    clean = [i for i in range(len(x)) if y[i] == 0]
    inside = {i: np.argwhere(ndimage.binary_erosion(brain_mask(x[i]), iterations=6)) for i in clean}
    hard: list[tuple[int, int, int]] = []
    network = _detector()
    optimiser = torch.optim.Adam(network.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 3e-3, total_steps=steps, pct_start=0.2)

    def heat_peaks(images: np.ndarray) -> np.ndarray:
        network.eval()
        with torch.inference_mode():
            peaks = [network(torch.from_numpy(images[s : s + 32]).unsqueeze(1)).flatten(1).amax(1)
                     for s in range(0, len(images), 32)]
        network.train()
        return torch.cat(peaks).double().numpy()

    def mine_hard_negatives() -> list[tuple[int, int, int]]:
        network.eval()
        found = []
        with torch.inference_mode():
            for s in range(0, len(clean), 32):
                chosen = clean[s : s + 32]
                heat = network(torch.from_numpy(x[chosen]).unsqueeze(1))
                for k, i in enumerate(chosen):
                    for flat in heat[k].flatten().topk(20).indices.tolist():
                        found.append((i, 4 * (flat // heat.shape[2]) + 2, 4 * (flat % heat.shape[2]) + 2))
        network.train()
        return found

    def batch():
        patches, labels = [], []
        for _ in range(BATCH // 2):
            i = lesioned[rng.integers(len(lesioned))]
            row, col = (int(rows[i][key]) + int(rng.integers(-PATCH // 4, PATCH // 4 + 1))
                        for key in ("lesion_row", "lesion_col"))
            patches.append(padded[i, row : row + PATCH, col : col + PATCH])
            labels.append(1.0)
            draw = rng.random()
            if draw < 0.5 and hard:
                j, row, col = hard[rng.integers(len(hard))]
            elif draw < 0.7:
                j = twin[i]
            else:
                j = clean[rng.integers(len(clean))]
                row, col = inside[j][rng.integers(len(inside[j]))]
            patches.append(padded[j, row : row + PATCH, col : col + PATCH])
            labels.append(0.0)
        patches = np.rot90(np.stack(patches), int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            patches = patches[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(patches)).unsqueeze(1), torch.tensor(labels)

    started = time.perf_counter()
    for step in range(1, steps + 1):
        patches, labels = batch()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(network(patches).flatten(1).amax(1), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 200 == 0:
            hard = mine_hard_negatives()
    seconds = time.perf_counter() - started

    tpadded = np.pad(tx, ((0, 0), (half, half), (half, half)), mode="reflect")
    sites = [(i, j, int(trows[i]["lesion_row"]), int(trows[i]["lesion_col"])) for i, j in _twins(trows).items()]
    local = np.stack([tpadded[i, r : r + PATCH, c : c + PATCH] for i, _, r, c in sites]
                     + [tpadded[j, r : r + PATCH, c : c + PATCH] for _, j, r, c in sites])
    local_y = np.r_[np.ones(len(sites)), np.zeros(len(sites))]
    figures = {"seconds": seconds, "n_test": len(tx), "n_pairs": len(sites)}
    for name, scores, targets in (("local", heat_peaks(local), local_y), ("image", heat_peaks(tx), ty)):
        _, resampled, _ = paired_bootstrap(scores[:, None], scores[:, None], targets[:, None])
        figures[name] = (auroc(scores, targets), float(np.percentile(resampled, 2.5)),
                         float(np.percentile(resampled, 97.5)))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--n-train", type=int, default=480)
    parser.add_argument("--n-test", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        figures = measure(args.steps, args.n_train, args.n_test, Path(folder))
    print("| figure | AUROC [95 % CI] | held-out n |")
    print("|---|---|---|")
    local, image = figures["local"], figures["image"]
    print(f"| local: lesion site vs the same site of its lesion-free twin | {local[0]:.3f} "
          f"[{local[1]:.3f}, {local[2]:.3f}] | {figures['n_pairs']} pairs |")
    print(f"| image: heat-map peak, lesioned vs lesion-free | {image[0]:.3f} [{image[1]:.3f}, {image[2]:.3f}] "
          f"| {figures['n_test']} images |")
    print(f"\n(training {figures['seconds']:.0f} s, {args.steps} steps of {BATCH} patches; told every training "
          "lesion's centre)")


if __name__ == "__main__":
    main()
