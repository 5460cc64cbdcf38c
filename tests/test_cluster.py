"""`wm embed --engine dask` and `--shard I/N` (issue 18) on real pydicom-data files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import fixed_key, run_wm
from watermark_cli.data.clinical import clinical_file
from watermark_cli.io.image import read_image
from watermark_cli.marking.image import codec_for, extract_payload
from watermark_cli.marking.shards import shard, shard_of
from watermark_cli.model.store import load_model

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]  # wants the machine to itself

MESSAGE = "cluster-18"
FILES = ["693_UNCR.dcm", "JPEG2000_UNC.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "CT_small.dcm"]


def real_folder(root: Path, copies: int = 1) -> Path:
    """Real DICOMs in a folder with a subfolder, plus one file that is not an image."""
    folder = root / "src"
    (folder / "sub").mkdir(parents=True)
    for copy in range(copies):
        for index, name in enumerate(FILES):
            target = folder / ("sub" if index % 2 else "") / f"{copy}_{name}"
            shutil.copyfile(clinical_file(name), target)
    (folder / "broken.dcm").write_text("not an image")
    return folder


def outputs(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*.dcm")}


def audit_outputs(folder: Path) -> list[str]:
    return [json.loads(line)["output"] for line in (folder / "wm-audit.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def shipped():
    loaded = load_model(None)
    return loaded, codec_for(loaded, None)


def test_dask_engine_gives_the_same_outcome_as_local(tmp_path, shipped):
    source = real_folder(tmp_path)
    local = run_wm("embed", source, MESSAGE, "-o", tmp_path / "local", "--json")
    dask = run_wm("embed", source, MESSAGE, "-o", tmp_path / "dask", "--engine", "dask", "--workers", "2", "--json")
    assert dask.code == local.code == 2 and "broken.dcm" in dask.stdout  # the bad file, reported, not stopping
    assert outputs(tmp_path / "dask") == outputs(tmp_path / "local") == {
        f"{'sub/' if i % 2 else ''}0_{name}" for i, name in enumerate(FILES)}
    loaded, codec = shipped
    for name in outputs(tmp_path / "dask"):
        decoded = extract_payload(loaded, codec, read_image(tmp_path / "dask" / name))
        assert decoded.found and decoded.message.decode() == MESSAGE
    audited = audit_outputs(tmp_path / "dask")
    assert len(audited) == len(set(audited)) == len(FILES)
    again = run_wm("embed", source, MESSAGE, "-o", tmp_path / "dask", "--engine", "dask", "--workers", "2")
    assert "already done 4" in again.stdout and len(audit_outputs(tmp_path / "dask")) == len(FILES)

    # wm extract --engine dask reads the same as local: marked files, an unmarked original, a bad file
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "dask", mixed)
    shutil.copyfile(clinical_file(FILES[0]), mixed / "unmarked.dcm")
    (mixed / "broken.dcm").write_text("not an image")
    read_local = run_wm("extract", mixed, "--json")
    read_dask = run_wm("extract", mixed, "--engine", "dask", "--workers", "2", "--json")
    assert read_dask.code == read_local.code == 2  # a bad file outranks a missing mark

    def by_input(result) -> dict:
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        return {Path(line["input"]).relative_to(mixed).as_posix(): (line.get("message"), "error" in line)
                for line in lines}

    expected = {name: (MESSAGE, False) for name in outputs(tmp_path / "dask")}
    expected.update({"unmarked.dcm": (None, False), "broken.dcm": (None, True)})
    assert by_input(read_dask) == by_input(read_local) == expected


def test_a_worker_killed_mid_run_loses_nothing_and_doubles_nothing(tmp_path, shipped):
    import psutil

    from watermark_cli.marking.cluster import embed_files_on_cluster
    from watermark_cli.marking.files import EmbedSettings
    from watermark_cli.quality import QualityFloor

    source = real_folder(tmp_path, copies=3)
    out = tmp_path / "out"
    jobs = [(path, out / path.relative_to(source)) for path in sorted(source.rglob("*_*.dcm"))]
    settings = EmbedSettings(MESSAGE.encode(), QualityFloor(40.0))
    # What a worker killed while writing leaves behind (whether the kill below lands mid-write is chance).
    planted = jobs[0][1].parent / f".{jobs[0][1].name}.tmp-killed"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"half a file")
    results, killed = [], []
    for outcome in embed_files_on_cluster(jobs, settings, workers=2):
        results.append(outcome)
        if not killed:
            # A worker is a child of this process that has a child of its own (its isolated reader).
            workers = [child for child in psutil.Process().children() if child.children()]
            assert workers, "no worker process found"
            workers[0].kill()
            killed.append(workers[0].pid)
    assert killed
    assert sorted(str(o.source) for o in results) == sorted(str(source) for source, _ in jobs)  # each once
    assert all(o.result is not None for o in results), [o.error for o in results if o.result is None]
    loaded, codec = shipped
    for _, destination in jobs:
        assert extract_payload(loaded, codec, read_image(destination)).message.decode() == MESSAGE
    assert not [path for path in out.rglob(".*") if path.is_file()]  # no temporary file left


def test_shards_are_disjoint_and_complete(tmp_path, shipped):
    paths = [f"study{i // 50}/series{i % 7}/image{i}.dcm" for i in range(100_000)]
    counts = [0] * 8
    for path in paths:
        counts[shard_of(path, 8)] += 1
    assert sum(counts) == len(paths) and max(counts) / min(counts) < 1.05  # balanced
    root = Path("/data")
    jobs = [(root / path, Path("/out") / path) for path in paths[:1000]]
    parts = [shard(jobs, root, index, 3) for index in range(3)]
    assert sorted(job for part in parts for job in part) == sorted(jobs)

    source = real_folder(tmp_path)
    out = tmp_path / "out"
    written = []
    for index in range(2):
        result = run_wm("embed", source, MESSAGE, "-o", out, "--shard", f"{index}/2")
        assert result.code in (0, 2), result.stderr
        written.append(outputs(out) - set().union(*written) if written else outputs(out))
    assert not (written[0] & written[1]) and written[0] | written[1] == outputs(out)
    assert len(outputs(out)) == len(FILES)
    audited = audit_outputs(out)
    assert len(audited) == len(set(audited)) == len(FILES)
    bad = run_wm("embed", source, MESSAGE, "-o", out, "--shard", "2/2")
    assert bad.code == 2 and "--shard" in bad.stderr


def test_a_key_file_is_read_by_the_workers_and_the_key_never_travels(tmp_path, shipped):
    import cloudpickle

    from watermark_cli.errors import BadInputError
    from watermark_cli.marking.cluster import MarkingPlugin, ReadingPlugin
    from watermark_cli.marking.files import EmbedSettings
    from watermark_cli.keys import KeyFileReference
    from watermark_cli.quality import QualityFloor

    secret = fixed_key("cluster secret").encode()
    key_file = tmp_path / "wm.key"
    key_file.write_bytes(secret + b"\n")
    reference = KeyFileReference.of(key_file, secret)
    settings = EmbedSettings(MESSAGE.encode(), QualityFloor(40.0), key=secret)
    for plugin in (MarkingPlugin(settings, 1, reference), ReadingPlugin(None, reference, 10**8, 1)):
        assert secret not in cloudpickle.dumps(plugin)  # what the scheduler would hold and forward
    assert reference.read() == secret
    key_file.write_bytes(fixed_key("another key").encode())  # a worker whose copy of the file differs refuses to work
    with pytest.raises(BadInputError, match="another key"):
        reference.read()
    key_file.write_bytes(secret + b"\n")

    source = tmp_path / "src"
    source.mkdir()
    for name in FILES[:2]:
        shutil.copyfile(clinical_file(name), source / name)
    marked = run_wm("embed", source, MESSAGE, "-o", tmp_path / "out", "--engine", "dask", "--workers", "2",
                    "--key-file", key_file)
    assert marked.code == 0, marked.stderr
    read = run_wm("extract", tmp_path / "out", "--engine", "dask", "--workers", "2", "--key-file", key_file, "--json")
    assert read.code == 0, read.stderr
    assert [json.loads(line)["message"] for line in read.stdout.splitlines() if line.startswith("{")] == [MESSAGE] * 2
    loaded, codec = shipped  # the public default key does not read them
    assert not any(extract_payload(loaded, codec, read_image(path)).found for path in (tmp_path / "out").glob("*.dcm"))
