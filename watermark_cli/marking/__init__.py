"""Pixels → mark → file: embedding and extraction on whole images, synchronisation, the fragile
mark of small frames (`fragile`), marking files, and reading a marked file back: its original
(`restoration`) and whether it is intact (`verification`).

Lives here: what `wm embed`, `wm extract`, `wm restore` and `wm verify` do once their arguments
are parsed. May import wm's core, integrity, io and model; not training, evaluation or the
command line.
"""
