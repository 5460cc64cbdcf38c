"""The classifier check on a model trained outside wm, in each file format wm runs.

    .venv/bin/python benchmarks/own_classifier.py [--n-train 400] [--n-test 240] [--epochs 12] [--keep DIR]

What a hospital does with its own model, end to end:

1. `wm data lesions` writes the nodule task (16-bit 256² PNGs, synthetic nodules on real clinical
   crops and phantoms): a train split and a held-out split whose backgrounds come from other
   images (split by background) and another seed;
2. this script's own PyTorch code (not wm's recipe) trains a small CNN on the train split: its
   own reading of the PNGs (each image stretched over its own min..max, torch's antialiased
   bilinear resize to 128², the gray repeated to 3 channels, normalised by mean 0.5 and sd 0.25)
   and its own loop (each batch holds whole pairs of `labels.csv`'s groups, one-cycle schedule);
3. it exports the network to TorchScript (`torch.jit.trace`), ONNX (`torch.onnx.export`, dynamic
   batch) and torch.export (`.pt2`, exported for a fixed batch of 8: wm pads the last batch) and
   writes the card that says all of the above;
4. for each file: the AUROC its own runtime gives on the held-out originals (torch.jit.load,
   onnxruntime, torch.export.load, its own preprocessing, sklearn's roc_auc_score), then
   `wm evaluate HELD_OUT --classifier FILE --classifier-card card.yaml --labels labels.csv
   --attacks identity --messages 1 --json`: the clean AUROC wm computes, ΔAUROC with its CI, the
   positive control's ΔAUROC and verdict, the detectable drop (80 % power) and the verdict.

Printed: training seconds and the model's held-out AUROC, then one row per format.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
INPUT = 128
MEAN, SD = 0.5, 0.25
EXPORT_BATCH = 8


def own_inputs(folder: Path):
    """(N, 3, 128, 128) float32, (N,) labels and the pairs (lists of row indices sharing a
    background): this script's own reading of the task."""
    import csv

    import torch
    import torch.nn.functional as F
    from PIL import Image

    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    images = np.stack([_own_range(np.asarray(Image.open(folder / row["path"]), dtype=np.float32)) for row in rows])
    small = F.interpolate(torch.from_numpy(images)[:, None], size=(INPUT, INPUT), mode="bilinear",
                          antialias=True, align_corners=False)
    pairs: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        pairs.setdefault(row["group"], []).append(index)
    return ((small.repeat(1, 3, 1, 1) - MEAN) / SD).contiguous(), np.array([int(r["label"]) for r in rows]), \
        list(pairs.values())


def _own_range(image: np.ndarray) -> np.ndarray:
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def network():
    import torch
    import torch.nn as nn

    def block(a, b):
        return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2))

    class MeanAndMax(nn.Module):  # a small nodule lights up a few positions: the max keeps them
        def forward(self, x):
            return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], 1)

    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64), block(64, 64), block(64, 96), MeanAndMax(),
                         nn.Linear(192, 1))


def train(inputs, labels, pairs, epochs: int, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    model = network()
    pairs_per_batch = 8
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3,
                                                   total_steps=epochs * -(-len(pairs) // pairs_per_batch))
    targets = torch.from_numpy(labels.astype(np.float32))[:, None]
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(pairs), generator=generator).tolist()
        for start in range(0, len(order), pairs_per_batch):
            batch = torch.tensor([i for pair in order[start : start + pairs_per_batch] for i in pairs[pair]])
            x = inputs[batch]
            if torch.rand(1, generator=generator) < 0.5:  # a flip: the finding has no side
                x = x.flip(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


def export(model, folder: Path) -> dict[str, Path]:
    import torch

    example = torch.zeros(EXPORT_BATCH, 3, INPUT, INPUT)
    files = {"TorchScript": folder / "model.ts", "ONNX": folder / "model.onnx", "torch.export": folder / "model.pt2"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, example).save(str(files["TorchScript"]))
        torch.onnx.export(model, (example,), str(files["ONNX"]), input_names=["image"], output_names=["logit"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
        torch.export.save(torch.export.export(model, (example,)), str(files["torch.export"]))
    (folder / "card.yaml").write_text(
        f"name: nodule CNN trained by benchmarks/own_classifier.py\ninput_size: {INPUT}\nchannels: 3\n"
        f"intensity: range\nnormalize: {{mean: {MEAN}, std: {SD}}}\noutput: logits\nlabels: [nodule]\n")
    return files


def own_scores(fmt: str, path: Path, inputs) -> np.ndarray:
    """The exported file run by its own runtime, outside wm."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "ONNX":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            return session.run(None, {"image": inputs.numpy()})[0][:, 0]
        module = torch.jit.load(str(path)) if fmt == "TorchScript" else torch.export.load(str(path)).module()
    scores = []
    for start in range(0, len(inputs), EXPORT_BATCH):
        batch = inputs[start : start + EXPORT_BATCH]
        count = len(batch)
        if count < EXPORT_BATCH:
            batch = torch.cat([batch, batch[-1:].repeat(EXPORT_BATCH - count, 1, 1, 1)])
        with torch.inference_mode():
            scores.append(module(batch)[:count, 0].numpy())
    return np.concatenate(scores)


def wm(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "watermark_cli", *map(str, args)], capture_output=True, text=True)


def main() -> None:
    from sklearn.metrics import roc_auc_score

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--n-test", type=int, default=240)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--control", default="mark:20")
    parser.add_argument("--keep", type=Path, help="Write the data, the model files and the reports here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        train_dir, test_dir = folder / "train", folder / "held_out"
        for split, out, n, seed in (("train", train_dir, args.n_train, 0), ("held_out", test_dir, args.n_test, 1)):
            made = wm("data", "lesions", out, "--split", split, "--n", n, "--seed", seed)
            if made.returncode:
                sys.exit(made.stderr)
        inputs, labels, pairs = own_inputs(train_dir)
        started = time.perf_counter()
        model = train(inputs, labels, pairs, args.epochs)
        seconds = time.perf_counter() - started
        test_inputs, test_labels, _ = own_inputs(test_dir)
        files = export(model, folder)
        print(f"trained outside wm: {len(labels)} images, {args.epochs} epochs, {seconds:.0f} s; held-out n = "
              f"{len(test_labels)} (split by background)", flush=True)
        print("| format | own AUROC | wm clean AUROC | ΔAUROC [95 % CI] | control Δ [95 % CI] | control | "
              "detectable drop | verdict | wm s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for fmt, path in files.items():
            own = roc_auc_score(test_labels, own_scores(fmt, path, test_inputs))
            started = time.perf_counter()
            run = wm("evaluate", test_dir, "--classifier", path, "--classifier-card", folder / "card.yaml",
                     "--labels", test_dir / "labels.csv", "--attacks", "identity", "--messages", "1",
                     "--control", args.control, "--report", folder / f"report-{path.suffix[1:]}", "--json")
            elapsed = time.perf_counter() - started
            if run.returncode not in (0, 1):
                print(f"| {fmt} | {own:.4f} | wm evaluate failed: {run.stderr.strip()} |", flush=True)
                continue
            block = json.loads(run.stdout)["classifier"]
            ci, control = block["delta_auroc_ci95"], block["control"]
            cci = control["delta_auroc_ci95"]
            print(f"| {fmt} | {own:.4f} | {block['auroc_clean']:.4f} | {block['delta_auroc']:+.4f} "
                  f"[{ci[0]:+.4f}, {ci[1]:+.4f}] | {control['delta_auroc']:+.4f} [{cci[0]:+.4f}, {cci[1]:+.4f}] | "
                  f"{control['verdict']} | {block['power']['detectable_drop']:.3f} | {block['verdict']} | "
                  f"{elapsed:.0f} |", flush=True)


if __name__ == "__main__":
    main()
