"""The diagnostic classifier check: does a classifier score marked images as it scores originals?

Lives here: the classifier (labels, preprocessing, networks, training, scoring) and the check's
statistics. May import wm's core, io, model (the store) and training data.
"""
