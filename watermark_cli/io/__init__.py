"""Files in and out: DICOM, PNG, TIFF and JPEG images at native bit depth, and the audit log.

Lives here: reading pixels with what a reader needs to view them, writing files atomically (with
the restoration record and signature the integrity codecs make). May import wm's core and
integrity; knows nothing of models or marking.
"""
