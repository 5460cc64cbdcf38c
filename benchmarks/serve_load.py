"""Load on `wm serve`: many instances over concurrent associations, into a real Orthanc.

    .venv/bin/python benchmarks/serve_load.py [--instances 500] [--associations 4] [--workers 2]
                                              [--image 693_UNCR.dcm]

Copies of one real pydicom-data image, each with its own SOP Instance UID, are sent by
pynetdicom SCUs over `--associations` concurrent associations to a `wm serve` (subprocess,
default settings: the shipped model, the 40 dB view floor), which forwards to an Orthanc on
loopback ports (its own temporary storage). Prints throughput (instances per second from the
first receipt to the last forward), the latency of each instance from receipt to forward (p50,
p95, max, from the node's JSON log), the node's peak resident memory, and what was lost or
duplicated (Orthanc's instances against the instances sent, by the original UID each marked
instance references).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dicom_peers import Orthanc, free_port, wait_for  # noqa: E402


def send(port: int, datasets: list, failures: list) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="LOADSCU")
    for sop_class in {ds.SOPClassUID for ds in datasets}:
        ae.add_requested_context(sop_class, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="WMNODE")
    if not assoc.is_established:
        failures.append("association not established")
        return
    for ds in datasets:
        status = assoc.send_c_store(ds)
        if getattr(status, "Status", None) != 0x0000:
            failures.append(f"C-STORE status {getattr(status, 'Status', None)}")
    assoc.release()


def peak_memory_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    import subprocess

    import pydicom
    from pydicom.uid import generate_uid

    from watermark_cli.data.clinical import clinical_file

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image", default="693_UNCR.dcm")
    args = parser.parse_args()

    template = pydicom.dcmread(clinical_file(args.image))
    datasets, originals = [], set()
    for _ in range(args.instances):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        datasets.append(ds)
        originals.add(str(ds.SOPInstanceUID))

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        orthanc = Orthanc(root / "orthanc").start()
        port = free_port()
        config = root / "serve.yaml"
        config.write_text(yaml.safe_dump({
            "port": port, "ae_title": "WMNODE", "allow": ["LOADSCU"], "spool": str(root / "spool"),
            "forward": {"host": "127.0.0.1", "port": orthanc.dicom, "ae_title": "ORTHANC"},
            "workers": args.workers, "max_spool_instances": args.instances + 10}))
        log = root / "serve.log"
        node = subprocess.Popen([sys.executable, "-m", "watermark_cli", "serve", "--config", str(config)],
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: '"listening"' in log.read_text(), 120, "wm serve to listen")
            failures: list = []
            shares = [datasets[i::args.associations] for i in range(args.associations)]
            started = time.perf_counter()
            threads = [threading.Thread(target=send, args=(port, share, failures)) for share in shares]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wait_for(lambda: log.read_text().count('"forwarded"') >= args.instances, 3600, "every forward")
            elapsed = time.perf_counter() - started
            memory = peak_memory_mib(node.pid)
        finally:
            node.terminate()
            node.wait(timeout=120)

        events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        received = {e["sop_instance_uid"]: datetime.fromisoformat(e["time"]) for e in events if e["event"] == "received"}
        forwarded = {}
        for e in events:
            if e["event"] == "forwarded":
                forwarded.setdefault(e["sop_instance_uid"], datetime.fromisoformat(e["time"]))
        latencies = sorted((forwarded[uid] - received[uid]).total_seconds() for uid in forwarded if uid in received)
        stored = orthanc.instances()
        referenced = []
        for instance in stored:
            tags = json.loads(orthanc._get(f"/instances/{instance}/tags?simplify") or b"{}")
            source = tags.get("SourceImageSequence") or [{}]
            referenced.append(source[-1].get("ReferencedSOPInstanceUID"))
        orthanc.stop()

    lost = len(originals - set(referenced))
    duplicated = len(referenced) - len(set(referenced))
    span = (max(forwarded.values()) - min(received.values())).total_seconds()
    print("| instances | associations | workers | image | throughput /s | latency p50 s | p95 s | max s | "
          "peak memory MiB | lost | duplicated | send failures |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.instances} | {args.associations} | {args.workers} | {args.image} | {args.instances / span:.2f} | "
          f"{statistics.median(latencies):.2f} | {latencies[int(0.95 * (len(latencies) - 1))]:.2f} | "
          f"{latencies[-1]:.2f} | {memory:.0f} | {lost} | {duplicated} | {len(failures)} |")
    print(f"wall time from the first send to the last forward: {elapsed:.1f} s")


if __name__ == "__main__":
    main()
