"""Pixels → mark → file: embedding and extraction on whole images, synchronisation, marking files.

Lives here: what `wm embed` and `wm extract` do once their arguments are parsed.
May import wm's core, io and model; not training, evaluation or the command line.
"""
