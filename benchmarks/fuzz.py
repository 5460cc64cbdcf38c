"""Fuzz wm's untrusted inputs: image readers (DICOM, PNG, TIFF, JPEG), messages, keys, the CLI.

    python benchmarks/fuzz.py --per-family 10000 --seconds-per-family 600 --out runs/fuzz
    python benchmarks/fuzz.py --quick            # 200 inputs per family, a smoke run
    python benchmarks/fuzz.py --corpus tests/fuzz_corpus   # also file the crashers found there

Each image input is generated from a real seed by a structured mutator (benchmarks/fuzzing/
mutators.py) and read by `watermark_cli.io.image.read_image` in one of `--workers` child
processes (benchmarks/fuzzing/harness.py). Exit code 1 if anything crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# Appended, not prepended: PYTHONPATH may point at another checkout of wm to fuzz (e.g. an older
# commit's `watermark_cli`, to confirm that a crasher is fixed).
sys.path.append(str(HERE.parent))

# One thread per decoder: two workers on a small machine, and no oversubscription.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

from fuzzing import harness, mutators  # noqa: E402

IMAGE_FAMILIES = mutators.FAMILIES
ALL_FAMILIES = (*IMAGE_FAMILIES, "message/key", "cli")
MAX_CORPUS_FILE = 200_000
MAX_CORPUS_TOTAL = 3_000_000
PER_SIGNATURE = 3


def _table(rows: list[harness.FamilyStats]) -> str:
    head = ("family", "inputs", "accepted", "clean errors", "crashes", "max memory MB", "max s/input", "inputs/s")
    body = [(s.family, str(s.inputs), str(s.accepted), str(s.clean), str(s.crashes), f"{s.max_rss_mb:.0f}",
             f"{s.max_seconds:.3f}", f"{s.rate:.1f}") for s in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(head), line(tuple("-" * w for w in widths)), *map(line, body)])


def _signatures(rows: list[harness.FamilyStats]) -> str:
    lines = []
    for stats in rows:
        for key, entry in sorted(stats.signatures.items(), key=lambda kv: -kv[1]["count"]):
            top = ", ".join(f"{m} ({n})" for m, n in entry["mutators"].most_common(3))
            lines.append(f"  [{stats.family}] {entry['count']}x {key}\n      mutators: {top}\n"
                         f"      e.g. {entry['example']}")
        for note, n in stats.notes.most_common(5):
            lines.append(f"  [{stats.family}] {n}x {note} (counted as a clean error)")
    return "\n".join(lines) or "  none"


def file_corpus(out: Path, corpus: Path, rows: list[harness.FamilyStats], seeds: dict) -> list[Path]:
    """Copy up to PER_SIGNATURE small crashers per distinct crash signature and family into `corpus`
    (never above MAX_CORPUS_FILE each or MAX_CORPUS_TOTAL in all), and write the limit files."""
    added: list[Path] = []
    total = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file()) if corpus.exists() else 0
    limits = corpus / "limits"
    limits.mkdir(parents=True, exist_ok=True)
    for name, data in mutators.limit_files(seeds).items():
        target = limits / name
        if not target.exists():
            target.write_bytes(data)
            total += len(data)
            added.append(target)
    for stats in rows:
        if stats.family == "cli":
            continue
        folder = corpus / stats.family.replace("/", "_")
        by_signature: dict[str, list[Path]] = {}
        results = out / f"results-{stats.family.replace('/', '_')}.jsonl"
        if not results.exists():
            continue
        for line in results.read_text().splitlines():
            result = harness.Result(**json.loads(line))
            if result.outcome == harness.CRASH and result.saved:
                by_signature.setdefault(harness.signature(result), []).append(out / result.saved)
        for key, paths in by_signature.items():
            paths = sorted({p for p in paths if p.exists()}, key=lambda p: (p.stat().st_size, p.name))
            # One slow or memory-hungry file per signature is enough: each costs the tests seconds.
            keep = 1 if key.startswith(("timeout", "slow", "memory", "signal")) else PER_SIGNATURE
            for path in [p for p in paths if p.stat().st_size < MAX_CORPUS_FILE][:keep]:
                target = folder / path.name
                if target.exists() or total + path.stat().st_size > MAX_CORPUS_TOTAL:
                    continue
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                total += path.stat().st_size
                added.append(target)
    return added


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-family", type=int, default=10_000, help="inputs per family (default 10000)")
    parser.add_argument("--seconds-per-family", type=float, default=600.0, help="time budget per family")
    parser.add_argument("--out", type=Path, default=Path("runs/fuzz"), help="output folder (default runs/fuzz)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 inputs per family")
    parser.add_argument("--families", default=",".join(ALL_FAMILIES),
                        help=f"comma-separated subset of {', '.join(ALL_FAMILIES)}")
    parser.add_argument("--workers", type=int, default=2, help="child processes reading images (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="run seed: the same seed gives the same inputs")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds before a busy child is killed")
    parser.add_argument("--slow", type=float, default=5.0, help="an input slower than this counts as a crash")
    parser.add_argument("--rss-mb", type=float, default=2048.0, help="child max RSS counted as a crash")
    parser.add_argument("--address-space-gib", type=float, default=8.0,
                        help="RLIMIT_AS of each child, protecting the machine (0: none; default 8)")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="regression corpus to file crashers into (e.g. tests/fuzz_corpus)")
    args = parser.parse_args(argv)
    count = 200 if args.quick else args.per_family
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = set(families) - set(ALL_FAMILIES)
    if unknown:
        parser.error(f"unknown families: {', '.join(sorted(unknown))}")

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    limits = harness.Limits(args.timeout, args.slow, args.rss_mb, args.address_space_gib)
    seeds = mutators.build_seeds()
    seeds_dir = out / "seeds"
    if seeds_dir.exists():
        shutil.rmtree(seeds_dir)
    harness.save_seeds(seeds, seeds_dir)
    seeds = harness.load_seeds(seeds_dir)  # the children's order: index i is the same input everywhere

    rows: list[harness.FamilyStats] = []
    started = time.monotonic()
    for family in [f for f in families if f in IMAGE_FAMILIES]:
        def progress(stats: harness.FamilyStats, family=family) -> None:
            if stats.inputs % 1000 == 0:
                print(f"  {family}: {stats.inputs} inputs, {stats.crashes} crashes "
                      f"({time.monotonic() - started:.0f} s)", flush=True)

        print(f"{family}: fuzzing up to {count} inputs", flush=True)
        rows.append(harness.run_family(family, count, args.seconds_per_family, out, seeds, seeds_dir,
                                       args.seed, args.workers, limits, progress))
    if "message/key" in families:
        print("message/key: fuzzing", flush=True)
        rows.append(harness.run_message_key(count, args.seconds_per_family, out, args.seed))
    if "cli" in families:
        print("cli: hostile invocations", flush=True)
        limit_dir = out / "limits"
        limit_dir.mkdir(exist_ok=True)
        extra = []
        for name, data in sorted(mutators.limit_files(seeds).items())[::3]:
            (limit_dir / name).write_bytes(data)
            extra.append(limit_dir / name)
        rows.append(harness.run_cli_cases(seeds, out, extra))
    wall = time.monotonic() - started

    print()
    print(_table(rows))
    print(f"\nwall time {wall:.0f} s ({os.cpu_count()} CPUs, {args.workers} workers)")
    print("\ndistinct crashes (signature, count, top mutators, example):")
    print(_signatures(rows))
    summary = {"wall_s": wall, "workers": args.workers, "per_family": count, "seed": args.seed,
               "families": [{**{k: v for k, v in vars(s).items() if k not in ("signatures", "notes")}, "notes": dict(s.notes), "rate": s.rate,
                             "signatures": {k: {**e, "mutators": dict(e["mutators"])}
                                            for k, e in s.signatures.items()}} for s in rows]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "table.txt").write_text(_table(rows) + f"\n\nwall time {wall:.0f} s\n\n" + _signatures(rows) + "\n")
    if args.corpus is not None:
        added = file_corpus(out, args.corpus, rows, seeds)
        print(f"\n{len(added)} file(s) added to {args.corpus}")
    return 1 if any(s.crashes for s in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
