"""The wire layer: Kiln's domain models (kiln_common.builds, .artifacts and
.publications, kiln_recipe.source) to and from the APIs' protobuf messages,
field by field (the names are the same on both sides). Besides the servicers, the only place
where these are protobuf; the builder's stored records, updates and recipes
are these messages' bytes, as before.

A dataclass field is read from the message field of its name: a nested
dataclass from a sub-message (None when the message does not have it and the
field may be None), a list from a repeated field, a dict from a map or a
Struct, a datetime from a Timestamp, a timedelta from a Duration, an IntEnum from an enum."""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from kiln_api.builder.v1 import builder_pb2 as pb
from kiln_api.publisher.v1 import publisher_pb2 as ppb
from kiln_api.storage.v1 import storage_pb2 as spb
from kiln_common.artifacts import Artifact
from kiln_common.builds import Build, BuildState, BuildUpdate
from kiln_common.channels import Channel
from kiln_common.publications import BaseHeader, Entry, Publication, PublishRequest
from kiln_common.schedules import Schedule, ScheduleRun
from kiln_recipe.source import RecipeSource, Validation

T = TypeVar("T")
M = TypeVar("M", bound=Message)


@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _inner(hint: Any) -> Any:
    """X from X | None, list[X] and tuple[X, ...]."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (list, tuple, typing.Union, types.UnionType) and args:
        return args[0]
    return hint


def to_message(obj: Any, cls: type[M]) -> M:
    """The message cls holding obj's fields (None fields left unset)."""
    msg = cls()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        _set(msg, msg.DESCRIPTOR.fields_by_name[f.name], value)
    return msg


def _set(msg: Message, fd: Any, value: Any) -> None:  # fd: a FieldDescriptor (upb's or not)
    if fd.message_type is None:  # scalars and enums, single or repeated
        if fd.is_repeated:
            getattr(msg, fd.name).extend(value)
        else:
            setattr(msg, fd.name, int(value) if isinstance(value, enum.IntEnum) else value)
        return
    target = getattr(msg, fd.name)
    if (
        fd.message_type.full_name == Struct.DESCRIPTOR.full_name
        or fd.message_type.GetOptions().map_entry
    ):
        if fd.containing_oneof is not None:
            target.SetInParent()  # set even when empty: {} is a structured recipe
        target.update(value)
    elif fd.message_type.full_name == Timestamp.DESCRIPTOR.full_name:
        target.FromDatetime(value)
    elif fd.message_type.full_name == Duration.DESCRIPTOR.full_name:
        target.FromTimedelta(value)
    elif fd.is_repeated:
        for item in value:
            element = target.add()
            element.CopyFrom(to_message(item, type(element)))
    else:
        target.CopyFrom(to_message(value, type(target)))


def from_message(msg: Message, cls: type[T]) -> T:
    """cls made from msg's fields of the same names."""
    kwargs: dict[str, Any] = {}
    model: Any = cls  # a dataclass type (hashable; fields() takes it)
    hints = _hints(model)
    for f in dataclasses.fields(model):
        fd = msg.DESCRIPTOR.fields_by_name[f.name]
        kwargs[f.name] = _get(msg, fd, hints[f.name])
    return cls(**kwargs)


def _get(msg: Message, fd: Any, hint: Any) -> Any:
    inner = _inner(hint)
    value = getattr(msg, fd.name)
    repeated = fd.is_repeated
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        return dict(value)
    if repeated:
        made = typing.get_origin(hint) or list  # list or tuple
        if fd.message_type is None:
            return made(inner(v) if isinstance(inner, type) else v for v in value)
        return made(from_message(v, inner) for v in value)
    if fd.has_presence and not msg.HasField(fd.name):
        return None if _optional(hint) else inner()
    if fd.message_type is None:
        return (
            inner(value) if isinstance(inner, type) and issubclass(inner, enum.IntEnum) else value
        )
    if fd.message_type.full_name == Timestamp.DESCRIPTOR.full_name:
        return value.ToDatetime(tzinfo=UTC)
    if fd.message_type.full_name == Duration.DESCRIPTOR.full_name:
        return value.ToTimedelta()
    if fd.message_type.full_name == Struct.DESCRIPTOR.full_name:
        return json_format.MessageToDict(value)
    return from_message(value, inner)


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


# ---- the Builder API's records and updates ----------------------------------------------


def build_message(build: Build) -> pb.Build:
    return to_message(build, pb.Build)


def build_of(msg: pb.Build) -> Build:
    return from_message(msg, Build)


def build_bytes(build: Build, over: bytes = b"") -> bytes:
    """The record's bytes; over: the stored bytes it replaces, whose fields
    this version does not know (a newer pod wrote them) are kept."""
    msg: Message = pb.Build.FromString(over)
    for f in dataclasses.fields(build):
        msg.ClearField(f.name)
    msg.MergeFrom(build_message(build))
    return msg.SerializeToString()


def build_from_bytes(data: bytes) -> Build:
    return build_of(pb.Build.FromString(data))


def build_summary(data: bytes) -> tuple[BuildState, str, str]:
    """The state, name and tenant of a stored record, without converting the
    rest (the list index reads every record of the bucket)."""
    msg = pb.Build.FromString(data)
    # An unknown state number is kept (builds.OpenEnum).
    return BuildState(msg.state), msg.name, msg.tenant


def build_json(build: Build) -> str:
    """The record as the API's JSON (`kiln build show --json`)."""
    return json_format.MessageToJson(build_message(build), preserving_proto_field_name=True)


def update_message(update: BuildUpdate) -> pb.BuildUpdate:
    return to_message(update, pb.BuildUpdate)


def update_of(msg: pb.BuildUpdate) -> BuildUpdate:
    return from_message(msg, BuildUpdate)


def update_from_bytes(data: bytes) -> BuildUpdate:
    return update_of(pb.BuildUpdate.FromString(data))


# ---- schedules -----------------------------------------------------------------------------


def schedule_message(schedule: Schedule) -> pb.Schedule:
    return to_message(schedule, pb.Schedule)


def schedule_of(msg: pb.Schedule) -> Schedule:
    return from_message(msg, Schedule)


def schedule_bytes(schedule: Schedule) -> bytes:
    return schedule_message(schedule).SerializeToString()


def schedule_from_bytes(data: bytes) -> Schedule:
    return schedule_of(pb.Schedule.FromString(data))


def run_message(run: ScheduleRun) -> pb.ScheduleRun:
    return to_message(run, pb.ScheduleRun)


def run_of(msg: pb.ScheduleRun) -> ScheduleRun:
    return from_message(msg, ScheduleRun)


def run_bytes(run: ScheduleRun) -> bytes:
    return run_message(run).SerializeToString()


def run_from_bytes(data: bytes) -> ScheduleRun:
    return run_of(pb.ScheduleRun.FromString(data))


# ---- channels ------------------------------------------------------------------------------


def channel_message(channel: Channel) -> pb.Channel:
    return to_message(channel, pb.Channel)


def channel_of(msg: pb.Channel) -> Channel:
    return from_message(msg, Channel)


def channels_bytes(channels: list[Channel]) -> bytes:
    reply = pb.ListChannelsResponse(channels=[channel_message(c) for c in channels])
    return reply.SerializeToString()


def channels_from_bytes(data: bytes) -> list[Channel]:
    return [channel_of(c) for c in pb.ListChannelsResponse.FromString(data).channels]


def channels_json(channels: list[Channel]) -> str:
    return "[" + ",".join(message_json(channel_message(c)) for c in channels) + "]"


def message_json(msg: Message) -> str:
    """A message as the API's JSON (the CLI's --json)."""
    return json_format.MessageToJson(msg, preserving_proto_field_name=True)


def schedules_json(schedules: list[Schedule]) -> str:
    return "[" + ",".join(message_json(schedule_message(s)) for s in schedules) + "]"


def runs_json(runs: list[ScheduleRun]) -> str:
    return "[" + ",".join(message_json(run_message(r)) for r in runs) + "]"


# ---- recipes -------------------------------------------------------------------------------


def recipe_message(source: RecipeSource) -> pb.RecipeSource:
    return to_message(source, pb.RecipeSource)


def recipe_of(msg: pb.RecipeSource) -> RecipeSource:
    return from_message(msg, RecipeSource)


def recipe_bytes(source: RecipeSource) -> bytes:
    return recipe_message(source).SerializeToString()


def recipe_from_bytes(data: bytes) -> RecipeSource:
    return recipe_of(pb.RecipeSource.FromString(data))


def validation_message(found: Validation) -> pb.ValidateRecipeResponse:
    return to_message(found, pb.ValidateRecipeResponse)


def validation_of(msg: pb.ValidateRecipeResponse) -> Validation:
    return from_message(msg, Validation)


# ---- the Storage API's artifacts ------------------------------------------------------------


def artifact_of(msg: spb.Artifact) -> Artifact:
    return from_message(msg, Artifact)


def artifact_message(artifact: Artifact) -> spb.Artifact:
    return to_message(artifact, spb.Artifact)


# ---- the Publisher API's publications and entries -----------------------------------------


def publication_message(publication: Publication) -> ppb.Publication:
    msg = to_message(publication, ppb.Publication)
    msg.state = typing.cast(Any, int(publication.state))  # derived from the results
    return msg


def publication_json(publication: Publication) -> dict[str, Any]:
    """The publication as the API's JSON (`kiln publish --json`)."""
    msg = publication_message(publication)
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def publication_of(msg: ppb.Publication) -> Publication:
    return from_message(msg, Publication)  # its state is the results' again


def publish_message(request: PublishRequest) -> ppb.PublishRequest:
    return to_message(request, ppb.PublishRequest)


def publish_of(msg: ppb.PublishRequest) -> PublishRequest:
    return from_message(msg, PublishRequest)


def entry_message(entry: Entry) -> ppb.Entry:
    return to_message(entry, ppb.Entry)


def entry_of(msg: ppb.Entry) -> Entry:
    return from_message(msg, Entry)


def base_header_of(msg: ppb.FetchBaseHeader) -> BaseHeader:
    return from_message(msg, BaseHeader)


def timestamp_text(when: datetime | None) -> str:
    """RFC 3339, as the API's JSON writes a Timestamp (what the CLI printed)."""
    stamp = Timestamp()
    if when is not None:
        stamp.FromDatetime(when)
    return stamp.ToJsonString()
