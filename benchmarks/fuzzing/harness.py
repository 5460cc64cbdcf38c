"""Feed mutated files to `read_image` in child processes that are replaced when they die.

Contract checked per input: `read_image` returns a MedicalImage or raises a WmError whose message
is one line naming the file. Anything else is a crash: another exception (a BaseException such as
pyo3's PanicException included), the child dying (signal), a MemoryError that escapes as
anything but a WmError, a resident set above the memory limit, or an input slower than the slow
limit / the time limit. A WmError caused by a MemoryError under the child's address-space limit
(a virtual allocation the guard refused, pages never touched) is a clean error, counted as a note.

Each child generates its inputs itself from (run seed, family, index), so nothing but indices
crosses the pipe; the input a dead child was reading is rebuilt in the parent from its index
and saved under crashes/<family>/<family>-<mutator>-<hash><suffix>.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
import signal
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from . import mutators

ACCEPTED, CLEAN, CRASH, GENERATOR = "accepted", "clean error", "crash", "generator error"
NOTE_MEMORY_GUARD = "note: MemoryError under the address-space guard"


@dataclass
class Limits:
    timeout_s: float = 20.0  # a child still busy after this is killed: crash 'timeout'
    slow_s: float = 5.0  # an input that took longer than this is a crash 'slow'
    rss_mb: float = 2048.0  # child max RSS above this: crash 'memory'
    address_space_gib: float = 8.0  # RLIMIT_AS of each child (0: none): protects the machine


@dataclass
class Result:
    family: str
    index: int
    mutator: str
    seed: str
    outcome: str
    kind: str = ""  # crash: exception type, 'signal SIGSEGV', 'timeout', 'memory', 'slow', ...
    message: str = ""
    seconds: float = 0.0
    rss_mb: float = 0.0
    size: int = 0
    saved: str = ""


@dataclass
class FamilyStats:
    family: str
    inputs: int = 0
    accepted: int = 0
    clean: int = 0
    crashes: int = 0
    generator_errors: int = 0
    max_rss_mb: float = 0.0
    max_seconds: float = 0.0
    wall_s: float = 0.0
    signatures: dict = field(default_factory=dict)  # signature -> {"count", "example", "mutators"}
    notes: Counter = field(default_factory=Counter)  # clean errors worth a look (memory guard hits)

    def add(self, result: Result) -> None:
        if result.outcome == GENERATOR:
            self.generator_errors += 1
            return
        self.inputs += 1
        self.accepted += result.outcome == ACCEPTED
        self.clean += result.outcome == CLEAN
        self.max_rss_mb = max(self.max_rss_mb, result.rss_mb)
        self.max_seconds = max(self.max_seconds, result.seconds)
        if result.outcome == CLEAN and result.kind.startswith("note"):
            self.notes[f"{result.kind} ({result.mutator})"] += 1
        if result.outcome == CRASH:
            self.crashes += 1
            key = signature(result)
            entry = self.signatures.setdefault(key, {"count": 0, "example": result.saved, "mutators": Counter(),
                                                     "kind": result.kind, "message": result.message})
            entry["count"] += 1
            entry["mutators"][result.mutator] += 1

    @property
    def rate(self) -> float:
        return self.inputs / self.wall_s if self.wall_s else 0.0


def signature(result: Result) -> str:
    """What makes two crashes the same: the kind and the message without paths and numbers."""
    message = re.sub(r"\S*fz-\d+\.\w+", "<file>", result.message)
    message = re.sub(r"\\u[0-9a-fA-F]{4}|\\x[0-9a-fA-F]{2}", "<char>", message)  # the characters at fault
    message = re.sub(r"\bcharacters\b", "character", message)
    message = re.sub(r"0x[0-9a-fA-F]+|\d+(-\d+)?", "#", message)
    where = f"{result.mutator.split('-')[0]} " if result.family == "message/key" else ""
    return f"{where}{result.kind}: {message[:90]}"


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _memory_error_in_chain(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MemoryError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


# ----------------------------------------------------------------------------------------------
# The child


def _max_rss_mb() -> float:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # decoders isolated by wm itself
    return max(own, children) / 1024.0  # kilobytes on Linux


def _child(conn, seeds_dir: str, run_seed: int, work_dir: str, limits: Limits) -> None:
    import resource

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # Rust panics and decoder chatter print backtraces to stderr
    if limits.address_space_gib:
        limit = int(limits.address_space_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import warnings

    warnings.simplefilter("ignore")
    from watermark_cli.errors import WmError
    from watermark_cli.io.image import read_image
    from watermark_cli.io.medical_image import MedicalImage

    seeds = load_seeds(Path(seeds_dir))
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    while True:
        task = conn.recv()
        if task is None:
            return
        family, index = task
        try:
            mutant = mutators.generate(family, seeds, run_seed, index)
        except Exception as exc:  # a bug of ours, not of read_image
            conn.send(Result(family, index, "?", "?", GENERATOR, type(exc).__name__, one_line(exc)))
            continue
        path = work / f"fz-{index}{mutant.suffix}"
        path.write_bytes(mutant.data)
        result = Result(family, index, mutant.mutator, mutant.seed, ACCEPTED, size=len(mutant.data))
        before = _max_rss_mb()
        start = time.perf_counter()
        try:
            image = read_image(path)
            if not isinstance(image, MedicalImage):
                result.outcome, result.kind = CRASH, f"returned {type(image).__name__}"
        except WmError as exc:
            text = str(exc)
            result.outcome, result.message = CLEAN, one_line(text)
            if _memory_error_in_chain(exc):
                # Usually a virtual allocation the guard refuses (e.g. pydicom's read of a 4 GiB
                # element length from a small file, which never touches those pages): a note,
                # not a crash; the RSS check below catches memory really used.
                result.kind = NOTE_MEMORY_GUARD
            if "\n" in text.strip() or not text.strip():
                result.outcome, result.kind = CRASH, "WmError message not one line"
            elif path.name not in text:
                result.outcome, result.kind = CRASH, "WmError message does not name the file"
        except BaseException as exc:  # noqa: BLE001 - everything else is what we are looking for
            result.outcome, result.kind, result.message = CRASH, type(exc).__name__, one_line(exc)
            if isinstance(exc, MemoryError) or _memory_error_in_chain(exc):
                result.kind = f"memory ({type(exc).__name__})"
        result.seconds = time.perf_counter() - start
        image = None
        result.rss_mb = _max_rss_mb()
        grew = result.rss_mb > before + 1
        if result.rss_mb > limits.rss_mb and grew and result.outcome != CRASH:
            result.outcome, result.kind = CRASH, f"memory (max RSS {result.rss_mb:.0f} MB)"
        elif result.seconds > limits.slow_s and result.outcome != CRASH:
            # Confirm on a second read: the machine may have been busy with something else.
            again = time.perf_counter()
            try:
                read_image(path)
            except BaseException:  # noqa: BLE001 - only the time matters here
                pass
            result.seconds = min(result.seconds, time.perf_counter() - again)
            if result.seconds > limits.slow_s:
                result.outcome, result.kind = CRASH, f"slow (> {limits.slow_s:g} s)"
        try:
            path.unlink()
        except OSError:
            pass
        conn.send(result)
        if result.rss_mb > limits.rss_mb:
            return  # a fresh child measures the next input from a clean slate


# ----------------------------------------------------------------------------------------------
# The parent


def save_seeds(seeds: dict, folder: Path) -> None:
    for family, items in seeds.items():
        (folder / family).mkdir(parents=True, exist_ok=True)
        for seed in items:
            (folder / family / seed.name).write_bytes(seed.data)


def load_seeds(folder: Path) -> dict:
    return {family: [mutators.Seed(p.name, p.read_bytes()) for p in sorted((folder / family).iterdir())]
            for family in mutators.FAMILIES}


def crash_file_name(family: str, mutator: str, data: bytes, suffix: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", mutator)[:60]
    return f"{family}-{safe}-{hashlib.sha256(data).hexdigest()[:10]}{suffix}"


class _Worker:
    def __init__(self, ctx, number: int, seeds_dir: Path, run_seed: int, work: Path, limits: Limits):
        self.parent_conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_child, args=(child_conn, str(seeds_dir), run_seed,
                                                        str(work / f"worker-{number}"), limits), daemon=True)
        self.process.start()
        child_conn.close()
        self.task: tuple[str, int] | None = None
        self.started = 0.0
        self.alive = True

    def give(self, task: tuple[str, int]) -> None:
        self.task, self.started = task, time.monotonic()
        self.parent_conn.send(task)

    def stop(self, kill: bool = False) -> None:
        if kill and self.process.is_alive():
            self.process.kill()
        else:
            try:
                self.parent_conn.send(None)
            except OSError:
                pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.parent_conn.close()
        self.alive = False


def _death_reason(process) -> str:
    code = process.exitcode
    if code is None:
        return "died"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def run_family(family: str, count: int, seconds: float, out: Path, seeds: dict, seeds_dir: Path,
               run_seed: int = 0, workers: int = 2, limits: Limits | None = None,
               progress=None) -> FamilyStats:
    """Up to `count` inputs of `family` (or until `seconds` have passed) through `workers` children."""
    limits = limits or Limits()
    ctx = mp.get_context("spawn")  # children never share the parent's state (or torch)
    crashes_dir = out / "crashes" / family
    crashes_dir.mkdir(parents=True, exist_ok=True)
    stats = FamilyStats(family)
    pool = [_Worker(ctx, k, seeds_dir, run_seed, out / "work", limits) for k in range(workers)]
    next_index, started = 0, time.monotonic()
    with open(out / f"results-{family}.jsonl", "w") as log:

        def record(result: Result) -> None:
            if result.outcome == CRASH:
                mutant = mutators.generate(family, seeds, run_seed, result.index)
                name = crash_file_name(family, mutant.mutator, mutant.data, mutant.suffix)
                (crashes_dir / name).write_bytes(mutant.data)
                result.saved = str(Path("crashes") / family / name)
                result.mutator, result.seed, result.size = mutant.mutator, mutant.seed, len(mutant.data)
            stats.add(result)
            log.write(json.dumps(asdict(result)) + "\n")
            if progress is not None:
                progress(stats)

        try:
            while True:
                in_time = time.monotonic() - started < seconds
                for k, worker in enumerate(pool):
                    if not worker.alive:
                        pool[k] = worker = _Worker(ctx, k, seeds_dir, run_seed, out / "work", limits)
                    if worker.task is None and next_index < count and in_time:
                        worker.give((family, next_index))
                        next_index += 1
                busy = [w for w in pool if w.task is not None]
                if not busy:
                    break
                ready = wait([w.parent_conn for w in busy] + [w.process.sentinel for w in busy], timeout=0.5)
                now = time.monotonic()
                for worker in busy:
                    if worker.parent_conn in ready:
                        try:
                            result = worker.parent_conn.recv()
                        except (EOFError, OSError):
                            result = None
                        if result is not None:
                            worker.task = None
                            record(result)
                            if result.rss_mb > limits.rss_mb:
                                worker.stop()
                            continue
                    if worker.process.sentinel in ready or not worker.process.is_alive():
                        worker.process.join(1)
                        family_, index = worker.task
                        record(Result(family_, index, "?", "?", CRASH, _death_reason(worker.process),
                                      "the child process died reading this input"))
                        worker.task = None
                        worker.stop(kill=True)
                    elif now - worker.started > limits.timeout_s:
                        family_, index = worker.task
                        worker.stop(kill=True)
                        record(Result(family_, index, "?", "?", CRASH, "timeout",
                                      f"no answer after {limits.timeout_s:g} s", seconds=now - worker.started))
                        worker.task = None
        finally:
            for worker in pool:
                if worker.alive:
                    worker.stop(kill=worker.task is not None)
    stats.wall_s = time.monotonic() - started
    return stats


# ----------------------------------------------------------------------------------------------
# Messages, keys and the CLI (in the parent: the codec needs the model, hence torch)


def run_message_key(count: int, seconds: float, out: Path, run_seed: int = 0) -> FamilyStats:
    """`message_bytes`, `resolve_key` and the codec's `encode` on hostile text and key files."""
    import random
    import resource
    import tempfile

    from watermark_cli.cli.options import message_bytes
    from watermark_cli.keys import GENERATED_PREFIX, guessability_problem, resolve_key
    from watermark_cli.errors import WmError
    from watermark_cli.marking.image import codec_for
    from watermark_cli.model.store import load_model

    model = load_model(None)
    codec = codec_for(model, None)
    stats = FamilyStats("message/key")
    crashes_dir = out / "crashes" / "message_key"
    crashes_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    saved_env = os.environ.pop("WM_KEY", None)
    with tempfile.TemporaryDirectory() as tmp, open(out / "results-message_key.jsonl", "w") as log:
        folder = Path(tmp) / "a-folder"
        folder.mkdir()
        for index in range(count):
            if time.monotonic() - started > seconds:
                break
            rng = random.Random(f"{run_seed}:message:{index}")
            what = rng.choice(("message", "message", "key", "key", "env"))
            case: dict = {"function": what}
            start = time.perf_counter()
            result = Result("message/key", index, "", "-", ACCEPTED)
            try:
                if what == "message":
                    how, text, hex_message = mutators.message_input(rng)
                    result.mutator = f"message-{how}"
                    case.update(message=text, hex_message=hex_message)
                    payload = message_bytes(text, hex_message)
                    codec.encode(payload)
                elif what == "key":
                    how, key_text, content = mutators.key_input(rng)
                    result.mutator = f"key-{how}"
                    path = None
                    if content == "missing":
                        path = Path(tmp) / "no-such-key"
                    elif content == "folder":
                        path = folder
                    elif content is not None:
                        path = Path(tmp) / "key-file"
                        path.write_bytes(content)
                    case.update(key=key_text, key_file=None if path is None else content if isinstance(
                        content, str) else {"bytes": len(content), "head": content[:64].hex()})
                    secret = resolve_key(key_text, path)
                    if rng.random() < 0.2:
                        # The strength check every marking run makes; a codec only where no
                        # scrypt runs (seconds per passphrase would leave the budget to it).
                        guessability_problem(secret)
                        if secret is None or secret.startswith(GENERATED_PREFIX):
                            codec_for(model, secret).encode(b"hi")
                else:
                    how, key_text, _ = mutators.key_input(rng)
                    key_text = key_text if key_text is not None else ""
                    result.mutator = f"env-{how}"
                    case.update(env_WM_KEY=key_text)
                    try:
                        os.environ["WM_KEY"] = key_text
                    except (UnicodeEncodeError, ValueError):
                        result.outcome = GENERATOR  # not a value an environment can hold
                    else:
                        resolve_key(None, None)
            except WmError as exc:
                text = str(exc)
                result.outcome, result.message = CLEAN, one_line(text)
                if "\n" in text.strip() or not text.strip():
                    result.outcome, result.kind = CRASH, "WmError message not one line"
            except Exception as exc:  # noqa: BLE001
                result.outcome, result.kind, result.message = CRASH, type(exc).__name__, one_line(exc)
            finally:
                os.environ.pop("WM_KEY", None)
            result.seconds = time.perf_counter() - start
            result.rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            if result.outcome == CRASH:
                body = json.dumps(case, indent=1)
                name = crash_file_name("message_key", result.mutator, body.encode("utf-8", "surrogatepass"), ".json")
                if len(body) < 200_000:
                    (crashes_dir / name).write_text(body, encoding="utf-8")
                    result.saved = str(Path("crashes") / "message_key" / name)
            stats.add(result)
            log.write(json.dumps(asdict(result)) + "\n")
    if saved_env is not None:
        os.environ["WM_KEY"] = saved_env
    stats.wall_s = time.monotonic() - started
    return stats


def run_cli_cases(seeds: dict, out: Path, extra_inputs: list[Path] = ()) -> FamilyStats:
    """A handful of hostile invocations of the real CLI, in-process: exit code 0/1/2, no traceback,
    and no 'unexpected' (the CLI's last line of defence against a non-WmError)."""
    import contextlib
    import io
    import sys
    import tempfile

    from watermark_cli.cli import main

    stats = FamilyStats("cli")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image = tmp / "ct_u8.png"
        image.write_bytes(next(s for s in seeds["png"] if s.name == "ct_u8.png").data)
        (tmp / "empty.key").write_bytes(b"")
        (tmp / "binary.key").write_bytes(bytes(range(256)))
        (tmp / "folder.key").mkdir()
        surrogate = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
        cases = [
            ("embed-surrogate-message", ["embed", str(image), surrogate, "-o", str(tmp / "o1.png")]),
            ("embed-nul-control", ["embed", str(image), "a\x00\x1b[2J\x7f", "-o", str(tmp / "o2.png")]),
            ("embed-hex-odd", ["embed", str(image), "abc", "--hex", "-o", str(tmp / "o3.png")]),
            ("embed-hex-junk", ["embed", str(image), "zz", "--hex", "-o", str(tmp / "o4.png")]),
            ("embed-long-message", ["embed", str(image), "x" * 10**6, "-o", str(tmp / "o5.png")]),
            ("embed-empty-message", ["embed", str(image), "", "-o", str(tmp / "o6.png")]),
            ("embed-surrogate-key", ["embed", str(image), "hi", "--key", surrogate, "-o", str(tmp / "o7.png")]),
            ("embed-key-file-empty", ["embed", str(image), "hi", "--key-file", str(tmp / "empty.key")]),
            ("embed-key-file-folder", ["embed", str(image), "hi", "--key-file", str(tmp / "folder.key")]),
            ("embed-key-file-missing", ["embed", str(image), "hi", "--key-file", str(tmp / "missing.key")]),
            ("extract-key-file-binary", ["extract", str(image), "--key-file", str(tmp / "binary.key")]),
            ("extract-surrogate-key", ["extract", str(image), "--key", surrogate]),
        ]
        for number, path in enumerate(extra_inputs):
            cases.append((f"extract-{path.name}", ["extract", str(path)]))
        with open(out / "results-cli.jsonl", "w") as log:
            for index, (name, argv) in enumerate(cases):
                result = Result("cli", index, name, "-", ACCEPTED)
                err, std = io.StringIO(), io.StringIO()
                saved_argv = sys.argv
                sys.argv = ["wm", *argv]
                start = time.perf_counter()
                code = 0
                try:
                    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
                        main()
                except SystemExit as exit_:
                    code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
                except BaseException as exc:  # noqa: BLE001 - main() must not raise anything else
                    result.outcome, result.kind, result.message = CRASH, type(exc).__name__, one_line(exc)
                finally:
                    sys.argv = saved_argv
                result.seconds = time.perf_counter() - start
                text = err.getvalue()
                if result.outcome != CRASH:
                    result.message = one_line(text, 200)
                    if "Traceback" in text:
                        result.outcome, result.kind = CRASH, "traceback on stderr"
                    elif "unexpected" in text:
                        result.outcome, result.kind = CRASH, "unexpected error (non-WmError escaped)"
                    elif code not in (0, 1, 2):
                        result.outcome, result.kind = CRASH, f"exit code {code}"
                    elif code:
                        result.outcome = CLEAN
                stats.add(result)
                log.write(json.dumps({**asdict(result), "exit_code": code}) + "\n")
    stats.wall_s = time.monotonic() - started
    return stats
