"""Loops numpy cannot vectorise, compiled to machine code (numba) by `compiled`.

numba is imported only by the modules whose functions it compiles (`polar_decoder`,
`marking.fold_kernel`), which are imported on first use: `wm --help` never loads it."""

from __future__ import annotations

from numba import njit


def compiled(function):
    """`function` compiled on its first call, the machine code kept beside its file (or in
    numba's user cache) for later processes: seconds to compile, a fraction of one to load (the
    first compiled function a process calls costs about 0.4 s, numba's own start). Where no
    cache can be written (a read-only install), each process compiles it anew. It runs without
    the interpreter lock, so threads reading files side by side run it at once."""
    try:
        return njit(cache=True, nogil=True)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return njit(nogil=True)(function)
