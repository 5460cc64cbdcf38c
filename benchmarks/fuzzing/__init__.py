"""Fuzzing of wm's untrusted inputs: image files (DICOM, PNG, TIFF, JPEG), messages and keys.

`mutators` builds seeds from real files and damages them deterministically; `harness` feeds them to
`read_image` in replaceable child processes; `atheris_target` is the coverage-guided entry point.
"""
