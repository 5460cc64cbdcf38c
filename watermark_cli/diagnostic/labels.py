"""Labels of the diagnostic classifier: which images show which finding.

`read_labels` takes a CSV `path,label` (0/1: one finding), a CSV `path,A,B,...` (0/1 per
finding: multi-label), or a folder (its `labels.csv`, else its class subfolders; see
`read_labels` for the rule that picks the positive class of two). An optional `group` column
(a patient, or the background a `wm data lesions` pair shares) keeps a group together in
training (`diagnostic.training`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..io.discovery import iter_image_files

# Two class subfolders: the positive one is the folder with one of these names (any case) ...
POSITIVE_FOLDER_NAMES = ("1", "positive", "lesion", "abnormal")
# ... else the second in sorted order (e.g. "0" / "1", "benign" / "malignant").


@dataclass(frozen=True)
class LabelledImages:
    """Images with their 0/1 findings: `targets[i, k]` is finding `label_names[k]` of `paths[i]`."""

    paths: list[Path]
    targets: np.ndarray  # (N, K) float32 of 0. / 1.
    label_names: list[str]
    source: Path  # the labels CSV or the folder of class subfolders
    groups: list[str] | None = None  # from an optional `group` column; None: each image alone

    @property
    def task(self) -> str:
        return "binary" if len(self.label_names) == 1 else "multilabel"

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> "LabelledImages":
        indices = list(indices)
        groups = None if self.groups is None else [self.groups[i] for i in indices]
        return LabelledImages([self.paths[i] for i in indices], self.targets[indices], self.label_names, self.source,
                              groups)

    def group_of(self, index: int) -> str:
        """The image's group: its `group` value, else the image itself."""
        if self.groups is not None and self.groups[index]:
            return self.groups[index]
        return f"file:{self.paths[index]}"

    def within(self, folder: Path) -> "LabelledImages":
        """Only the images below `folder` (or equal to it, for a file); BadInputError if none."""
        root = Path(folder).resolve()
        keep = [i for i, path in enumerate(self.paths)
                if path.resolve() == root or root in path.resolve().parents]
        if not keep:
            raise BadInputError(f"none of the {len(self)} images labelled in {self.source} lies in {folder}")
        return self.subset(keep)

    def targets_for(self, paths: Sequence[Path]) -> np.ndarray:
        """(len(paths), K) targets of these files (matched by resolved path); BadInputError for
        a file that has no label."""
        index = {path.resolve(): i for i, path in enumerate(self.paths)}
        rows = []
        for path in paths:
            row = index.get(Path(path).resolve())
            if row is None:
                raise BadInputError(f"{path} has no label in {self.source}")
            rows.append(row)
        return self.targets[rows]

    def positives(self) -> dict[str, int]:
        return {name: int(self.targets[:, k].sum()) for k, name in enumerate(self.label_names)}


def read_labels(source: str | Path) -> LabelledImages:
    """Labels from a CSV file, or from a folder (its `labels.csv`, else its class subfolders).

    CSV: a header row `path,NAME` (one finding, 0/1) or `path,A,B,...` (0/1 per finding), one
    row per image; paths relative to the CSV's folder, or absolute. An optional column named
    `group` (a patient or study ID; in `wm data lesions`, the background two images share) is
    not a finding: images of one group are never split between training and validation, and
    train in the same batch with the same augmentation.
    Class subfolders (at least two subfolders holding images): with two, the positive class is
    the folder named 1, positive, lesion or abnormal (any case) if exactly one is, else the
    second in sorted order, and the finding is named after it; with three or more, each folder
    is a finding and each image is positive for its own folder only.
    Any unusable label or missing file is a BadInputError naming it.
    """
    source = Path(source)
    if source.is_file():
        return _read_label_csv(source)
    if not source.is_dir():
        raise BadInputError(f"labels: no such file or folder: {source}")
    if (source / "labels.csv").is_file():
        return _read_label_csv(source / "labels.csv")
    return _read_class_folders(source)


def _read_label_csv(path: Path) -> LabelledImages:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(number, row) for number, row in enumerate(csv.reader(f), start=1)
                    if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BadInputError(f"{path}: cannot read labels ({error})") from None
    if not rows:
        raise BadInputError(f"{path}: empty labels file")
    header = [cell.strip() for cell in rows[0][1]]
    if len(header) < 2 or header[0].lower() != "path":
        raise BadInputError(f"{path}: the first row must be a header 'path,label' or 'path,FINDING,...', "
                            f"got {','.join(header)!r}")
    group_column = next((i for i, name in enumerate(header) if i > 0 and name.lower() == "group"), None)
    finding_columns = [i for i in range(1, len(header)) if i != group_column]
    names = [header[i] for i in finding_columns]
    if not names:
        raise BadInputError(f"{path}: no finding column besides path and group")
    if any(not name for name in names) or len(set(names)) != len(names):
        raise BadInputError(f"{path}: finding names in the header must be non-empty and distinct")
    if len(rows) < 2:
        raise BadInputError(f"{path}: no images listed")

    paths, targets, groups, missing, seen = [], [], [], [], {}
    for number, row in rows[1:]:
        cells = [cell.strip() for cell in row]
        if len(cells) != len(header):
            raise BadInputError(f"{path} line {number}: {len(cells)} columns, the header has {len(header)}")
        values = []
        for name, cell in zip(names, (cells[i] for i in finding_columns)):
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if value not in (0.0, 1.0):
                raise BadInputError(f"{path} line {number}: {name} is {cell!r}, not 0 or 1")
            values.append(value)
        if not cells[0]:
            raise BadInputError(f"{path} line {number}: empty path")
        image = Path(cells[0]) if Path(cells[0]).is_absolute() else path.parent / cells[0]
        key = image.resolve()
        if key in seen:
            raise BadInputError(f"{path} line {number}: {cells[0]} is listed twice (first on line {seen[key]})")
        seen[key] = number
        if not image.is_file():
            missing.append(f"line {number}: {cells[0]}")
        paths.append(image)
        targets.append(values)
        groups.append(cells[group_column] if group_column is not None else "")
    if missing:
        raise BadInputError(f"{path}: {len(missing)} listed file(s) do not exist, first {missing[0]}")
    return LabelledImages(paths, np.asarray(targets, dtype=np.float32), names, path,
                          groups if group_column is not None else None)


def _read_class_folders(folder: Path) -> LabelledImages:
    classes = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = iter_image_files(sub)
        if files:
            classes.append((sub.name, files))
    if len(classes) < 2:
        raise BadInputError(f"{folder}: no labels.csv and no class subfolders (at least two folders of images)")
    if len(classes) == 2:
        named_positive = [i for i, (name, _) in enumerate(classes) if name.lower() in POSITIVE_FOLDER_NAMES]
        positive = named_positive[0] if len(named_positive) == 1 else 1
        names = [classes[positive][0]]
        paths = [path for _, files in classes for path in files]
        targets = [[1.0 if i == positive else 0.0] for i, (_, files) in enumerate(classes) for _ in files]
    else:
        names = [name for name, _ in classes]
        paths = [path for _, files in classes for path in files]
        targets = [[1.0 if j == i else 0.0 for j in range(len(classes))]
                   for i, (_, files) in enumerate(classes) for _ in files]
    return LabelledImages(paths, np.asarray(targets, dtype=np.float32), names, folder)


def matching_outputs(output_names: Sequence[str], label_names: Sequence[str]) -> list[int]:
    """Which classifier output scores each labelled finding, in the labels' order: by name, except
    that one label column and one output match whatever they are called. BadInputError (one
    line) when a finding has no output of its name."""
    if len(output_names) == 1 and len(label_names) == 1:
        return [0]
    index = {str(name): i for i, name in enumerate(output_names)}
    missing = [str(name) for name in label_names if str(name) not in index]
    if missing:
        raise BadInputError(f"the labels name {', '.join(missing)}, which the classifier does not score (its outputs: "
                            f"{', '.join(map(str, output_names))}): name the label columns after its outputs")
    return [index[str(name)] for name in label_names]
