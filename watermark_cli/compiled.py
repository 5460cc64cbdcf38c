"""Loops numpy cannot vectorise, compiled to machine code (numba) by `compiled`.

numba is imported only by the modules whose functions it compiles (`polar_decoder`,
`marking.fold_kernel`), which are imported on first use: `wm --help` never loads it."""

from __future__ import annotations

from numba import njit


def compiled(*argument_types):
    """A decorator: the function compiled to machine code, for `argument_types` (numba types) when
    its module is imported, or on its first call when none are given (a helper, compiled with the
    function that calls it). The code is kept beside the module (or in numba's user cache) for
    later processes: seconds to compile, a fraction of one to load (a process that loads both
    kernels spends about 0.8 s, most of it starting numba); importing the modules once after installing
    (`scripts/setup_env.sh`, the Dockerfile) compiles them there. Where no cache can be written
    (a read-only install), each process compiles anew. It runs without the interpreter lock:
    threads reading files side by side run it at once."""
    signature = (argument_types,) if argument_types else ()

    def compile_function(function):
        try:
            return njit(*signature, cache=True, nogil=True)(function)
        except RuntimeError:  # numba: "cannot cache function ...: no locator available"
            return njit(*signature, nogil=True)(function)

    return compile_function
