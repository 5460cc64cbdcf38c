"""A question asked of a child process forked for it, for what only such a child can tell: whether
a process forked from this one can still use CUDA, or compute a gradient (`model.device`,
`marking.threads`). torch keeps that state to itself, and finding out here could spoil it."""

from __future__ import annotations

from collections.abc import Callable


def exit_code_in_forked_child(target: Callable[..., None], *args, timeout_s: float = 60) -> int | None:
    """The exit code of a child forked from this process to run `target(*args)` (which ends it
    with `os._exit`, printing nothing); None where this process may have no children (a daemonic
    one, such as a Dask worker). A child still running after `timeout_s` is killed and
    TimeoutError raised."""
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=target, args=args, daemon=True)
    try:
        child.start()
    except (AssertionError, OSError):
        return None
    child.join(timeout=timeout_s)
    if child.exitcode is None:
        child.kill()
        child.join(timeout=5)
        raise TimeoutError(f"the child did not answer within {timeout_s:g} s")
    return child.exitcode
