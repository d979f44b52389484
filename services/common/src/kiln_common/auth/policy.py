"""What each RPC of every Kiln service asks of its caller: one table, read by
the one interceptor. A method that is not listed is refused (fail closed);
OPEN methods (health) take no identity."""

from __future__ import annotations

from typing import Final

from kiln_common.auth.identity import Verb

OPEN: Final = "open"

_BUILDER = "/kiln.builder.v1.Builder/"
_SCHEDULES = "/kiln.builder.v1.Schedules/"
_CHANNELS = "/kiln.builder.v1.Channels/"
_STORAGE = "/kiln.storage.v1.Storage/"
_PUBLISHER = "/kiln.publisher.v1.Publisher/"
_TOKENS = "/kiln.auth.v1.Tokens/"
_HEALTH = "/grpc.health.v1.Health/"

_STORAGE_WRITES = (
    "Upload", "CreateUpload", "UploadPart", "GetUpload", "CompleteUpload",
    "AbortUpload",
)  # fmt: skip

_SCHEDULE_CHANGES = (
    "AddSchedule", "DeleteSchedule", "PauseSchedule", "ResumeSchedule", "RunSchedule",
)  # fmt: skip

METHODS: dict[str, Verb | str] = {
    _HEALTH + "Check": OPEN,
    _HEALTH + "Watch": OPEN,
    **{_BUILDER + m: Verb.BUILD for m in ("SubmitBuild", "CancelBuild")},
    **{
        _BUILDER + m: Verb.READ
        for m in ("GetBuild", "ListBuilds", "WatchBuild", "ValidateRecipe", "GetBuildRecipe")
    },
    **{_SCHEDULES + m: Verb.BUILD for m in _SCHEDULE_CHANGES},
    **{_SCHEDULES + m: Verb.READ for m in ("GetSchedule", "ListSchedules", "ListScheduleRuns")},
    # Moving a channel publishes (its followers are published); revoking unpublishes.
    **{_CHANNELS + m: Verb.PUBLISH for m in ("SetChannel", "SetChannelPolicy", "RevokeVersion")},
    **{_CHANNELS + m: Verb.READ for m in ("GetChannel", "ListChannels")},
    **{_STORAGE + m: Verb.WRITE for m in _STORAGE_WRITES},
    _STORAGE + "DeleteArtifact": Verb.DELETE,
    **{
        _STORAGE + m: Verb.READ
        for m in ("StatArtifact", "ListArtifacts", "Download", "GetDownloadUrl")
    },
    **{_PUBLISHER + m: Verb.PUBLISH for m in ("Publish", "DeprecateEntry")},
    _PUBLISHER + "FetchBase": Verb.BUILD,  # a builder's base
    **{
        _PUBLISHER + m: Verb.READ
        for m in ("GetPublication", "ListPublications", "SearchEntries", "GetEntry")
    },
    **{_TOKENS + m: Verb.ADMIN for m in ("CreateToken", "ListTokens", "RevokeToken")},
    _TOKENS + "WhoAmI": Verb.READ,
}


def required(method: str) -> Verb | str | None:
    """The verb method asks for, OPEN, or None for a method Kiln does not know."""
    return METHODS.get(method)
