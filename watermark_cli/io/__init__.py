"""Files in and out: DICOM, PNG, TIFF and JPEG images at native bit depth, and the audit log.

Lives here: reading pixels with what a reader needs to view them, writing files atomically.
May import wm's core (errors, views, payload, jsonout); knows nothing of models or marking.
"""
