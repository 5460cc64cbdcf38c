"""Files in and out: DICOM, PNG, TIFF and JPEG images at native bit depth, and the audit log.

Lives here: the image type (`medical_image`), which files are images (`discovery`), each format
(`dicom`, `raster`), the one reader and writer over them (`image`), the one atomic write
(`writing`), decoding in a process of its own (`isolation`), the audit log file (`audit`).
Writing stores the restoration record and signature the integrity codecs make. May import wm's
core and integrity; knows nothing of models or marking.
"""

from .audit import AuditLog, default_audit_path
from .dicom import DICOM_COMPRESSIONS, DICOM_ELEMENTS_CHANGED_ON_WRITE, compress_losslessly, dicom_high_bits
from .discovery import collect_image_files, is_image_file, iter_image_files, scan_folder, sniff_kind
from .image import check_writable, file_record, read_image, write_image
from .isolation import IsolatedReader
from .medical_image import DEFAULT_MAX_PIXELS, MedicalImage, check_declared_size
from .writing import write_atomically

__all__ = ["DEFAULT_MAX_PIXELS", "DICOM_COMPRESSIONS", "DICOM_ELEMENTS_CHANGED_ON_WRITE", "AuditLog", "IsolatedReader",
           "MedicalImage", "check_declared_size", "check_writable", "collect_image_files", "compress_losslessly",
           "default_audit_path", "dicom_high_bits", "file_record", "is_image_file", "iter_image_files", "read_image",
           "scan_folder", "sniff_kind", "write_atomically", "write_image"]
