"""Attacks: what happens to an image after it leaves wm, with real codecs and as training layers.

Lives here: the evaluation attacks (`codecs`, numpy and real encoders) and their differentiable
or straight-through counterparts for training (`layers`, torch). May import wm's core only.
"""
