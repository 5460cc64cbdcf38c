"""Loading is safe: weights wm did not write in its own formats are refused in one line, and no
pickle from a model folder, a classifier folder, a checkpoint or --weights is ever executed.

Every malicious file here is real: unpickled the unsafe way it creates a marker file (checked
first), and each test asserts the marker never appears when wm is handed the file.
"""

from __future__ import annotations

import io
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import run_wm_here

import watermark_cli.model.store as store

SHIPPED_DEFAULT = store.shipped_models_folder() / "default"


class _RunsCode:
    """Unpickled, creates (opens for writing) the file `marker`: stands in for any code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle(marker: Path, protocol: int) -> bytes:
    return pickle.dumps({"weight": _RunsCode(marker)}, protocol=protocol)


def _torch_zip(marker: Path) -> bytes:
    """What `torch.save` writes for a state dict holding the malicious object (a torch zip file)."""
    import torch

    buffer = io.BytesIO()
    torch.save({"format": 1, "weight": _RunsCode(marker)}, buffer)
    return buffer.getvalue()


def _torch_file(value) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _plain_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "not a torch file")
    return buffer.getvalue()


def _malicious(kind: str, marker: Path) -> bytes:
    return {"pickle-2": lambda: _pickle(marker, 2), "pickle-5": lambda: _pickle(marker, 5),
            "torch-zip": lambda: _torch_zip(marker)}[kind]()


MALICIOUS = ("pickle-2", "pickle-5", "torch-zip")


def _refused(result, *names: str) -> str:
    """The result of a refused command: exit 2, one stderr line naming every `names`, no traceback."""
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    line = result.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "\x1b" not in result.stderr
    for name in names:
        assert name in line, line
    return line


def _model_folder(tmp_path: Path, weights: bytes | None = None, name: str = "model") -> Path:
    """A model folder with the shipped default model's card, and `weights` as its weights.safetensors."""
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(SHIPPED_DEFAULT / store.CARD_FILE, folder / store.CARD_FILE)
    if weights is not None:
        (folder / store.WEIGHTS_FILE).write_bytes(weights)
    return folder


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "frame.png"
    Image.fromarray(np.full((64, 64), 1000, dtype=np.uint16)).save(path)
    return path


def test_the_malicious_files_really_run_code_when_unpickled_unsafely(tmp_path):
    import torch

    for kind in MALICIOUS:
        marker = tmp_path / f"ran-{kind}"
        data = _malicious(kind, marker)
        if kind == "torch-zip":
            assert data.startswith(b"PK\x03\x04")
            torch.load(io.BytesIO(data), weights_only=False)
        else:
            pickle.loads(data)
        assert marker.exists(), kind  # so a marker absent below means: not executed


def test_the_shipped_safetensors_model_still_loads(tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(SHIPPED_DEFAULT, folder)
    loaded = store.load_model(str(folder))
    assert loaded.n_bits == int(loaded.card["architecture"]["n_bits"])


@pytest.mark.parametrize("content", [*MALICIOUS, "torch-state-dict", "random", "empty", "json-but-short", "folder"])
def test_model_weights_that_are_not_safetensors_are_refused_unread(tmp_path, content):
    marker = tmp_path / "marker"
    folder = _model_folder(tmp_path)
    weights = folder / store.WEIGHTS_FILE
    if content == "folder":
        weights.mkdir()
    else:
        import torch

        weights.write_bytes({
            "torch-state-dict": lambda: _torch_file({"w": torch.zeros(3)}),
            "random": lambda: np.random.default_rng(0).bytes(4096),
            "empty": lambda: b"",
            "json-but-short": lambda: (1000).to_bytes(8, "little") + b'{"a": 1}',  # header past the end
        }.get(content, lambda: _malicious(content, marker))())
    line = _refused(run_wm_here("extract", _image(tmp_path), "--model", folder), str(weights))
    assert "not a safetensors file" in line
    assert not marker.exists()


def test_embed_refuses_a_torch_pickle_as_weights_too(tmp_path):
    marker = tmp_path / "marker"
    folder = _model_folder(tmp_path, _torch_zip(marker))
    result = run_wm_here("embed", _image(tmp_path), "hello", "--model", folder, "--output", tmp_path / "out.png")
    assert "not a safetensors file" in _refused(result, str(folder / store.WEIGHTS_FILE))
    assert not marker.exists() and not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("name", ["weights.pt", "model.pth", "pytorch_model.bin", "model.pkl"])
@pytest.mark.parametrize("with_card", [True, False])
def test_a_model_folder_of_pickled_weights_is_refused(tmp_path, name, with_card):
    marker = tmp_path / "marker"
    folder = _model_folder(tmp_path)
    if not with_card:
        (folder / store.CARD_FILE).unlink()
    (folder / name).write_bytes(_torch_zip(marker) if name.endswith((".pt", ".pth")) else _pickle(marker, 2))
    line = _refused(run_wm_here("extract", _image(tmp_path), "--model", folder), str(folder), name)
    assert "only loads safetensors" in line
    assert not marker.exists()


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/apply:builtins.open ['{marker}', 'w']",
    "!!python/name:os.system",
])
def test_a_card_with_a_python_tag_is_refused(tmp_path, tag):
    marker = tmp_path / "marker"
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED_DEFAULT, folder)
    card = folder / store.CARD_FILE
    card.write_text(card.read_text(encoding="utf-8") + f"evil: {tag.format(marker=marker)}\n", encoding="utf-8")
    line = _refused(run_wm_here("extract", _image(tmp_path), "--model", folder), str(card))
    assert "cannot read model card" in line
    assert not marker.exists()


# -- wm train --resume --------------------------------------------------------------------------


@pytest.mark.parametrize("content", [*MALICIOUS, "random", "empty", "plain-zip", "dict-without-format",
                                     "format-1-without-its-keys", "list"])
def test_resume_from_a_checkpoint_wm_did_not_write_is_refused(tmp_path, content):
    import torch

    marker = tmp_path / "marker"
    run = tmp_path / "run"
    run.mkdir()
    checkpoint = run / "checkpoint.pt"
    checkpoint.write_bytes({
        "random": lambda: np.random.default_rng(1).bytes(4096),
        "empty": lambda: b"",
        "plain-zip": _plain_zip,
        "dict-without-format": lambda: _torch_file({"model": {"w": torch.zeros(2)}, "epoch": 3}),
        "format-1-without-its-keys": lambda: _torch_file({"format": 1, "epoch": 3}),
        "list": lambda: _torch_file([torch.zeros(2)]),
    }.get(content, lambda: _malicious(content, marker))())
    line = _refused(run_wm_here("train", "--resume", run), str(checkpoint))
    assert "checkpoint" in line and "enforce fail" not in line and " . " not in line
    assert not marker.exists()
    if content in MALICIOUS:  # nothing written: the run folder is as it was
        assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]


# -- the diagnostic classifier --------------------------------------------------------------------


def _labelled_images(tmp_path: Path) -> Path:
    data = tmp_path / "labelled"
    data.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16), 1000 + 3000 * (i % 2), dtype=np.uint16)).save(data / f"i{i}.png")
    (data / "labels.csv").write_text("path,label\n" + "".join(f"i{i}.png,{i % 2}\n" for i in range(4)))
    return data


@pytest.mark.parametrize("content", MALICIOUS)
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_classifier_train_refuses_malicious_weights(tmp_path, content, suffix):
    marker = tmp_path / "marker"
    weights = tmp_path / f"evil{suffix}"
    weights.write_bytes(_malicious(content, marker))
    out = tmp_path / "classifier"
    result = run_wm_here("classifier", "train", _labelled_images(tmp_path), "--out", out, "--epochs", "1",
                         "--input-size", "32", "--weights", weights, "--device", "cpu")
    line = _refused(result, str(weights))
    assert ("not a safetensors file" if suffix == ".safetensors" else "torch file") in line \
        or "never unpickles" in line
    assert not marker.exists() and not out.exists()


def _classifier_folder(tmp_path: Path) -> Path:
    from watermark_cli.diagnostic.classifier import CARD_KIND

    folder = tmp_path / "classifier"
    folder.mkdir()
    card = {"kind": CARD_KIND, "architecture": {"arch": "small", "outputs": 1, "input_size": 32},
            "label_names": ["label"]}
    (folder / store.CARD_FILE).write_text(yaml.safe_dump(card), encoding="utf-8")
    return folder


def test_a_classifier_with_safetensors_weights_still_loads(tmp_path):
    from watermark_cli.diagnostic.classifier import load_classifier
    from watermark_cli.diagnostic.networks import build_network

    folder = _classifier_folder(tmp_path)
    card = yaml.safe_load((folder / store.CARD_FILE).read_text())
    store.save_model(folder, build_network("small", 1), card, half_precision=False)
    assert load_classifier(folder, device="cpu").label_names == ["label"]


@pytest.mark.parametrize("content", [*MALICIOUS, "folder", "pickled-weights-only"])
def test_evaluate_refuses_a_classifier_folder_of_pickles(tmp_path, content):
    marker = tmp_path / "marker"
    data = _labelled_images(tmp_path)
    folder = _classifier_folder(tmp_path)
    weights = folder / store.WEIGHTS_FILE
    if content == "folder":
        weights.mkdir()
    elif content == "pickled-weights-only":
        (folder / "weights.pt").write_bytes(_torch_zip(marker))
    else:
        weights.write_bytes(_malicious(content, marker))
    result = run_wm_here("evaluate", data, "--classifier", folder, "--labels", data / "labels.csv",
                         "--report", tmp_path / "report")
    if content == "pickled-weights-only":
        assert "only loads safetensors" in _refused(result, str(folder), "weights.pt")
    else:
        assert "not a safetensors file" in _refused(result, str(weights))
    assert not marker.exists() and not (tmp_path / "report").exists()
