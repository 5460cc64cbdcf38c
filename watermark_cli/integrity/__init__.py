"""Restoration records, pixel integrity and DICOM digital signatures (`wm restore`, `wm verify`)."""
