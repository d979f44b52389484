"""Which older images of a name to retire: a pure choice, tested on its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

KILN_MARK = "kiln_artifact_id"  # only images Kiln published are ever rotated
# Not (yet) an image: a publication in flight, or what a dead one left behind.
HALF_MADE = ("queued", "saving", "uploading", "importing", "killed")


def to_retire(
    images: Sequence[Mapping[str, Any]], newest_id: str, keep: int, how: str
) -> list[Mapping[str, Any]]:
    """The images beyond the newest keep (the one just published first, the rest
    by created_at, newest first), Kiln's only, and only those not retired the
    same way already. Half-made images neither count toward keep nor are
    retired: the publisher deletes them itself. keep 0: no rotation."""
    if keep <= 0:
        return []
    ours = [i for i in images if KILN_MARK in i and i.get("status") not in HALF_MADE]
    ours.sort(key=lambda i: (i["id"] == newest_id, str(i.get("created_at", ""))), reverse=True)
    return [i for i in ours[keep:] if not already(i, how)]


def already(image: Mapping[str, Any], how: str) -> bool:
    if how == "hide":
        return bool(image.get("os_hidden"))
    if how == "deactivate":
        return image.get("status") == "deactivated"
    return False
