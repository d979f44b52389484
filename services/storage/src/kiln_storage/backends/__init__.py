"""Object-store backends: a small key/value interface with multipart uploads.

The artifact logic (records, deduplication, checksums) lives once in
kiln_storage.core and kiln_storage.uploads; a backend only moves bytes under
keys."""

from kiln_storage.backends.base import MultipartInfo, ObjectStore

__all__ = ["MultipartInfo", "ObjectStore"]
