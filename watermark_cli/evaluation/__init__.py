"""`wm evaluate`: quality in every view, recovery per attack, false positives, and the report.

Lives here: the evaluation run and its report folder (JSON, CSV, plots, HTML).
May import wm's core, io, model, marking, attacks and diagnostic.
"""
