"""`--device` of embed, extract, evaluate and serve (issue 30): where the networks run.

On this machine (no GPU) the CPU path and the refusals are tested; the GPU test runs where
torch sees one, and checks that a mark made there keeps the floor on the stored values and reads
back on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import yaml

from conftest import fixed_key, run_wm, run_wm_here
from watermark_cli.data.clinical import clinical_file

KEY = fixed_key("device")
NO_GPU = not torch.cuda.is_available()


def _one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.skipif(not NO_GPU, reason="a GPU is present: cuda is not refused")
def test_a_gpu_asked_for_where_there_is_none_is_one_line_and_nothing_is_written(tmp_path):
    ct = shutil.copy(clinical_file("CT_small.dcm"), tmp_path / "ct.dcm")
    out = tmp_path / "out.dcm"
    for command in (("embed", ct, "R-1", "--key", KEY, "-o", out), ("extract", ct, "--key", KEY),
                    ("evaluate", ct, "--messages", "1", "--attacks", "identity")):
        result = run_wm_here(*command, "--device", "cuda")
        assert result.code == 2 and "no CUDA device" in _one_line(result), command
    assert not out.exists()
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"forward": "127.0.0.1:4242:ORTHANC", "device": "cuda"}))
    served = run_wm_here("serve", "--check", "--config", config, "--spool", tmp_path / "spool")
    assert served.code == 2 and "no CUDA device" in _one_line(served)


@pytest.fixture
def listed_gpu(monkeypatch, tmp_path):
    """A GPU that NVML lists (faked) and CUDA cannot use; each try of a CUDA operation writes
    the id of the process it ran in to the file this yields."""
    from watermark_cli.model import device as picker

    tried = tmp_path / "tried_in"

    def cuda_runs(index: int) -> bool:
        with open(tried, "a") as record:
            record.write(f"{os.getpid()}\n")
        return False

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(picker, "_cuda_runs", cuda_runs)
    picker._gpu_state.cache_clear()
    yield tried
    picker._gpu_state.cache_clear()


@pytest.mark.skipif(not NO_GPU, reason="a GPU is present: its probe would succeed")
def test_a_gpu_listed_where_cuda_does_not_run_is_refused_and_tried_in_a_child(listed_gpu, monkeypatch, capsys):
    """NVML may list a GPU that CUDA cannot use (a driver too old, a GPU taken). The picker tries
    a CUDA operation in a child process, not here (a run forks its workers from this process):
    `cuda` is then one clear error, and `auto` the CPU, said on stderr."""
    from watermark_cli.errors import BadInputError
    from watermark_cli.model import device as picker

    # As where NVML counted the GPU: a forked child may still start CUDA (here, with no NVML, the
    # count came from CUDA's own driver, which marks every child as unable to: the next test).
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: False)
    with pytest.raises(BadInputError, match="listed but CUDA does not run on it"):
        picker.pick_device("cuda")
    assert picker.model_device("auto") == "cpu" and picker.model_device("cpu") == "cpu"
    assert "the networks run on the CPU" in capsys.readouterr().err
    tried_in = listed_gpu.read_text().split()
    assert len(tried_in) == 1 and tried_in[0] != str(os.getpid())  # once, in a child
    assert picker.gpu_workers_may_fork()


@pytest.mark.skipif(not NO_GPU, reason="a GPU is present: its probe would succeed")
def test_where_a_forked_child_cannot_use_cuda_the_gpu_is_tried_here_and_nothing_forks(listed_gpu, monkeypatch):
    """Where only CUDA could count the GPUs (no NVML), its driver has started here and no forked
    process can use it: the child says so, the GPU is tried in this process, and the run's files
    go on threads (`gpu_workers_may_fork`)."""
    from watermark_cli.errors import BadInputError
    from watermark_cli.model import device as picker

    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: True)
    with pytest.raises(BadInputError, match="listed but CUDA does not run on it"):
        picker.pick_device("cuda")
    assert listed_gpu.read_text().split() == [str(os.getpid())]
    assert not picker.gpu_workers_may_fork()


def test_serve_refuses_a_device_it_does_not_know(tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"forward": "127.0.0.1:4242:ORTHANC", "device": "tpu"}))
    result = run_wm_here("serve", "--check", "--config", config, "--spool", tmp_path / "spool")
    assert result.code == 2 and "device 'tpu'" in _one_line(result) and not (tmp_path / "spool").exists()


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_embed_and_extract_run_on_the_device_asked_for(device, tmp_path):
    ct = shutil.copy(clinical_file("CT_small.dcm"), tmp_path / "ct.dcm")
    out = tmp_path / "out.dcm"
    marked = run_wm_here("embed", ct, "R-7", "--key", KEY, "-o", out, "--device", device, "--json")
    assert marked.code == 0, marked.stderr
    assert min(json.loads(marked.stdout)["psnr_views"].values()) >= 40.0
    read = run_wm_here("extract", out, "--key", KEY, "--device", device, "--json")
    assert read.code == 0 and json.loads(read.stdout)["message"] == "R-7"


@pytest.mark.skipif(NO_GPU, reason="no GPU on this machine")
def test_a_mark_made_on_the_gpu_keeps_the_floor_and_reads_on_the_cpu(tmp_path):
    from watermark_cli.io.image import read_image
    from watermark_cli.marking.image import codec_for, embed_pixels, extract_payload
    from watermark_cli.model.store import load_model
    from watermark_cli.quality import QualityFloor, frame_meters

    image = read_image(clinical_file("693_UNCR.dcm"))
    floor = QualityFloor(40.0)
    on_gpu, on_cpu = load_model(None, "cuda:0"), load_model(None, "cpu")
    marked = embed_pixels(on_gpu, codec_for(on_gpu, KEY), image, b"GPU-1", floor).pixels
    qualities = [meter.measure(frame) for meter, frame in zip(frame_meters(image, floor), marked)]
    assert all(quality.psnr >= 40.0 for quality in qualities)
    from dataclasses import replace

    decoded = extract_payload(on_cpu, codec_for(on_cpu, KEY), replace(image, pixels=marked))
    assert decoded.found and decoded.message == b"GPU-1"


@pytest.mark.skipif(NO_GPU, reason="no GPU on this machine")
def test_several_files_on_the_gpu_run_in_forked_workers_and_answer_as_the_cpu_does(tmp_path):
    """A folder on `--device cuda`: the files at once run in worker processes forked from the
    run, each with the networks moved to the GPU (`threads.in_workers`); the floor holds on the
    stored values and the reading of every file is the CPU's."""
    # Real processes (`run_wm`): this test process may have started CUDA (the test above), after
    # which the run would rightly keep its files on threads.
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("693_UNCR.dcm", "CT_small.dcm", "MR_small.dcm"):
        shutil.copy(clinical_file(name), folder / name)
    marked = run_wm("embed", folder, "G-3", "--key", KEY, "-o", tmp_path / "out", "--device", "cuda",
                    "--threads", "3", "--json")
    assert marked.code == 0, marked.stderr
    assert all(min(json.loads(line)["psnr_views"].values()) >= 40.0 for line in marked.stdout.splitlines())
    both = tmp_path / "both"
    shutil.copytree(tmp_path / "out", both, ignore=shutil.ignore_patterns("*.jsonl"))
    shutil.copy(clinical_file("693_UNCR.dcm"), both / "unmarked.dcm")
    readings = {}
    for device in ("cuda", "cpu"):
        done = run_wm("extract", both, "--key", KEY, "--device", device, "--threads", "4", "--json")
        assert done.code == 1, done.stderr  # the unmarked copy holds none
        readings[device] = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r.get("message") for r in readings["cuda"]] == [r.get("message") for r in readings["cpu"]]
    assert sorted(r.get("message") for r in readings["cuda"]) == [None, "G-3", "G-3", "G-3"]
