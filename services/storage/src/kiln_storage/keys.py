"""Where things are in the object store (one backend, S3 or a filesystem):
artifacts/<id>.json         the artifact record; written last, so an artifact
                            is visible only once whole
uploads/<upload id>.json    an upload session (resumable, any replica)
blobs/<upload id>           the bytes, assembled by a multipart upload
content/sha256/<digest>     which blob holds these bytes (deduplication)
refs/<digest>/<artifact id> one marker per artifact sharing that content
index/...                   the listing index (kiln_storage.index): markers
                            written before the record and removed before it
"""

from __future__ import annotations


def artifact_key(artifact_id: str) -> str:
    return f"artifacts/{artifact_id}.json"


def session_key(upload_id: str) -> str:
    return f"uploads/{upload_id}.json"


def content_key(sha256: str) -> str:
    return f"content/sha256/{sha256}"


def ref_prefix(sha256: str) -> str:
    return f"refs/{sha256}/"
