"""The result cache: a build whose inputs (kiln_builder.fingerprint) equal a
succeeded build's ends at once, as its own record pointing to that build's
artifacts (no copy), `cached_from` naming it. Per tenant, like the artifacts.

A recorded result is served only while it is still whole: its build
succeeded, was not revoked, and every one of its artifacts is still stored
(one deleted, and the next build of those inputs builds anew)."""

from __future__ import annotations

import dataclasses
import logging

from kiln_builder.service.records import BuildRecords
from kiln_builder.storage import StorageAccess
from kiln_common.builds import Build, BuildArtifact, BuildState
from kiln_common.errors import NotFound

log = logging.getLogger(__name__)

LOG_KIND = "build-log"  # the earlier build's own log: not a result; the new build has its own


async def find(
    records: BuildRecords, storage: StorageAccess, build: Build, inputs: str
) -> Build | None:
    """The succeeded build of the tenant's whose result serves these inputs, if whole."""
    earlier_id = await records.result(build.tenant, inputs)
    if not earlier_id or earlier_id == build.id:
        return None
    try:
        earlier = await records.get(earlier_id)
    except NotFound:
        return None
    if earlier.state != BuildState.SUCCEEDED or earlier.tenant != build.tenant:
        return None
    if earlier.revoked is not None:
        log.info("result of build %s not used: it was revoked", earlier.id)
        return None
    async with storage.client() as client:
        for artifact in cached_artifacts(earlier):
            try:
                await client.stat(artifact.artifact_id)
            except NotFound:
                log.info("result of build %s not used: artifact %s is gone",
                         earlier.id, artifact.artifact_id)  # fmt: skip
                return None
    return earlier


def cached_artifacts(earlier: Build) -> list[BuildArtifact]:
    """The artifacts a cached build shares: all of the earlier build's but its log."""
    return [dataclasses.replace(a) for a in earlier.artifacts if a.kind != LOG_KIND]
