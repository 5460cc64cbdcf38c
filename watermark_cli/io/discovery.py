"""Which files are images: by suffix, or by their first bytes (DICOM files are often named by
UID, or have no suffix), below folders the user named, never following a link out of them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import BadInputError
from .medical_image import SUPPORTED_SUFFIXES


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_JPEG_SIGNATURE = b"\xff\xd8\xff"


def sniff_kind(path: Path) -> str | None:
    """The format named by the file's first bytes, or None; trusting content over suffix."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head[:4] in _TIFF_SIGNATURES:
        return "tiff"
    if head.startswith(_JPEG_SIGNATURE):
        return "jpeg"
    return None


def is_image_file(path: str | Path) -> bool:
    """Cheap check used to pick files out of a folder: a known suffix, or a DICOM preamble.

    Only files with an unknown suffix (DICOM files are often named by UID or have none) are
    opened, and only their first 132 bytes are read.
    """
    path = Path(path)
    if not path.is_file():
        return False
    suffix = path.suffix.lower()
    if suffix in SUPPORTED_SUFFIXES and suffix != "":
        return True
    try:
        return sniff_kind(path) == "dicom"
    except OSError:
        return False


def iter_image_files(folder: str | Path) -> list[Path]:
    """All image files below `folder`, recursively, sorted (see `scan_folder`)."""
    return scan_folder(folder)[0]


def collect_image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files of `inputs`, files and folders (recursively), each once, sorted; a path
    that does not exist is a one-line error."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(iter_image_files(item))
        elif item.is_file():
            files.append(item)
        else:
            raise BadInputError(f"no such file or folder: {item}")
    return sorted(dict.fromkeys(files))


def scan_folder(folder: str | Path, exclude: Path | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(image files, [(skipped file, why)]) below `folder`, recursively, each sorted.

    Hidden files and folders are skipped silently, so that our own `.NAME.tmp-*` files and `.git`
    never count; so are DICOMDIRs (an index, not an image) and everything under `exclude` (an
    output folder placed inside the input folder must not become input on the next run).
    Symbolic links are never followed out of `folder`: a linked folder is not entered (a link
    can make a loop) and a linked file counts only when it resolves inside `folder`; both are
    listed as skipped otherwise, so nothing outside the tree the user named is read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: not a folder")
    root_resolved = folder.resolve()
    excluded = exclude.resolve() if exclude is not None else None
    images: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for root, dirs, files in os.walk(folder):
        kept = []
        for name in sorted(dirs):
            candidate = Path(root) / name
            if name.startswith(".") or (excluded is not None and _resolved(candidate) == excluded):
                continue
            if candidate.is_symlink():
                skipped.append((candidate, "a linked folder (links are not followed)"))
                continue
            kept.append(name)
        dirs[:] = kept
        for name in files:
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            candidate = Path(root) / name
            if candidate.is_symlink() and _resolved(candidate) is None:
                skipped.append((candidate, "a link that leads round in a loop"))
            elif candidate.is_symlink() and not _is_within(_resolved(candidate), root_resolved):
                skipped.append((candidate, "a link leading outside the input folder"))
            elif is_image_file(candidate):
                images.append(candidate)
            else:
                skipped.append((candidate, "not an image"))
    return sorted(images), sorted(skipped)


def _resolved(path: Path) -> Path | None:
    """The path with its links followed; None for a loop of links (Python raises for one)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return None


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
