"""How wm writes a file: whole or not at all. The one atomic write, used by every writer.

Images, model weights and cards, checkpoints, metrics, reports and data sets all go through
`write_atomically`: the content goes to a temporary file in the target's folder, is flushed and
fsynced, given the usual permissions, optionally verified, and then renamed (or hard-linked, when
an existing file must not be replaced) onto the target, and the folder is fsynced so that the
rename itself survives a power cut. A crash at any point leaves the old file or the new one,
never half of one, and no temporary file behind.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Union

import numpy as np

from ..errors import BadInputError

# Temporary files are named '.NAME.tmp-RANDOM': hidden, so no folder scan takes them for input.
_TEMPORARY_MARK = ".tmp-"

#: What to write: bytes, text (UTF-8), or a function that writes into the open binary file.
Content = Union[bytes, str, Callable[[BinaryIO], None]]


def write_atomically(path: str | Path, content: Content, *, overwrite: bool = True,
                     verify: Callable[[Path], None] | None = None, private: bool = False) -> Path:
    """Write `content` to `path` atomically (see the module docstring) and return the path.

    Without `overwrite`, the final step is a hard link, which fails instead of replacing a file
    that appeared in the meantime (a rename where links are unsupported). `verify` is called
    with the temporary file's path before it takes the target's name; whatever it raises leaves
    the target untouched. `private` keeps the file readable by its owner alone (mode 0600, as
    the temporary file is created: a secret is never readable by others, not even for a moment).
    OS errors become a one-line BadInputError naming the target.
    """
    path = Path(path)
    fd, temporary_name = tempfile.mkstemp(prefix=f".{path.name}{_TEMPORARY_MARK}", dir=path.parent)
    os.close(fd)  # reopened by name: tifffile wants a file object with a real name
    temporary = Path(temporary_name)
    try:
        with open(temporary, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode("utf-8") if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        if not private:
            os.chmod(temporary, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        if verify is not None:
            verify(temporary)
        if overwrite:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise BadInputError(f"{path}: already exists (use --overwrite to replace it)") from None
            except OSError:
                if path.exists():
                    raise BadInputError(f"{path}: already exists (use --overwrite to replace it)") from None
                os.replace(temporary, path)
    except OSError as error:
        detail = error.strerror or (str(error).splitlines() or [type(error).__name__])[0]
        raise BadInputError(f"{path}: cannot write ({detail})") from error
    finally:
        try:
            temporary.unlink()
        except FileNotFoundError:
            pass
    fsync_folder(path.parent)
    return path


@contextmanager
def exclusive_folder(folder: str | Path, part: str | None = None) -> Iterator[None]:
    """Hold `folder` for one writer: a second `wm embed` into the same folder fails at once with a
    one-line error instead of marking the same files and appending the same audit lines. An
    advisory flock(2) on the folder itself: nothing is created, and the kernel releases it
    when the holder exits, even when killed. With `part` (a shard, e.g. '0-of-4'), only that part
    is held, through a hidden lock file of its own: the other parts may run at the same time."""
    import fcntl

    try:
        fd = (os.open(Path(folder) / f".wm-{part}.lock", os.O_RDONLY | os.O_CREAT, 0o644) if part is not None
              else os.open(folder, os.O_RDONLY))
    except OSError as error:
        raise BadInputError(f"{folder}: cannot open the output folder ({error.strerror or error})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BadInputError(f"{folder}: another wm embed is writing into this folder"
                                + (f" (shard {part})" if part else "") + "; run again when it has finished") from None
        except OSError:
            pass  # a file system without locks: no worse than before
        yield
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | Path, targets: set[Path] | None = None) -> int:
    """Remove the temporary files a killed writer left below `folder` (a SIGKILL or a power cut
    skips `write_atomically`'s clean-up). Only safe while holding `exclusive_folder(folder)`:
    another writer's temporary file would otherwise be taken from under it. With `targets`,
    only the temporaries of those files (a shard's). Returns how many."""
    if targets is not None:
        return remove_temporaries_of(targets)
    return sum(_remove_temporary(stale) for stale in Path(folder).rglob(f".*{_TEMPORARY_MARK}*"))


def remove_temporaries_of(targets: Iterable[Path]) -> int:
    """Remove the temporary files left for these target files (each folder listed once), e.g.
    by a worker killed while writing one: call it only once no writer of these targets can
    still be running. Returns how many."""
    targets = {Path(target) for target in targets}
    removed = 0
    for parent in {target.parent for target in targets}:
        for stale in parent.glob(f".*{_TEMPORARY_MARK}*"):
            if _target_of(stale) in targets:
                removed += _remove_temporary(stale)
    return removed


def _target_of(temporary: Path) -> Path:
    # '.NAME.tmp-RANDOM' -> NAME; mkstemp's random part never holds the mark, a NAME might.
    return temporary.with_name(temporary.name[1:].rsplit(_TEMPORARY_MARK, 1)[0])


def _remove_temporary(stale: Path) -> bool:
    if not stale.is_file() or stale.is_symlink():
        return False
    try:
        stale.unlink()
    except OSError:
        return False
    return True


def fsync_folder(folder: str | Path) -> None:
    """Persist a rename or a new file's name in `folder` (POSIX); best effort where folders
    cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def png_bytes(frame: np.ndarray, compress_level: int = 6) -> bytes:
    """A gray PNG of one 2-D frame at its own depth: uint8 as 8-bit, uint16 as 16-bit gray
    (Pillow mode 'I;16', which PNG stores and reads back bit-exactly)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def csv_text(header: Sequence[str], rows: Iterable[Sequence | Mapping]) -> str:
    """CSV with a header line; rows as sequences in header order or as mappings by name."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row[name] for name in header] if isinstance(row, Mapping) else row)
    return buffer.getvalue()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
