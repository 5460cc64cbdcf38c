"""Codecs of integrity: the sealed restoration record, its CMS envelope for a recipient, where each
file format keeps it, and DICOM digital signatures.

Lives here: bytes and data sets in, bytes and data sets out, like the payload codec; no files are
read or written here (`io` stores a record in a file, `marking.restoration` and
`marking.verification` read a file and its mark). May import wm's core only.
"""
