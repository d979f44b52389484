"""Channels, as every part of Kiln speaks of them: a named pointer per recipe
name (and tenant) to one of its succeeded builds, with the moves that led
there. `latest` moves by itself on every new build; any other channel moves
only when someone asks (kiln_builder.service.channels). Plain dataclasses:
the Channels API's messages are made from them at the edges (kiln_client.wire)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from kiln_common.errors import InvalidArgument

LATEST = "latest"  # the channel that follows every new build by itself
KILN = "kiln"  # the mover of a channel that moved by itself (latest, fallback)
_CHANNEL_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")  # a recipe's name (kiln_recipe checks it)
# A recipe's version (64 at most), a dash and a build number.
_VERSION_RE = re.compile(r"[A-Za-z0-9._+-]{1,80}")


@dataclass
class ChannelRequirement:
    channel: str = ""  # the build must have sat in this channel
    seconds: int = 0  # for at least this long


@dataclass
class ChannelMove:
    time: datetime | None = None
    build_id: str = ""  # "" when the channel was left empty
    version: str = ""
    action: str = ""  # latest | set | fallback | revoked
    by: str = ""  # a token's subject, or kiln


@dataclass
class Channel:
    name: str = ""  # the recipe's name
    channel: str = ""
    build_id: str = ""  # "" when it points at nothing
    version: str = ""
    since: datetime | None = None
    requires: ChannelRequirement | None = None
    history: list[ChannelMove] = field(default_factory=list)  # oldest first


def check_channel(value: str) -> str:
    if not _CHANNEL_RE.fullmatch(value or ""):
        raise InvalidArgument(
            f"{value[:40]!r} is not a channel name (a-z first, then a-z 0-9 -, at most 32)"
        )
    return value


def check_name(value: str) -> str:
    if not NAME_RE.fullmatch(value or ""):
        raise InvalidArgument(f"{value[:70]!r} is not a recipe name (a-z first, then a-z 0-9 -)")
    return value


def check_version(value: str) -> str:
    if not _VERSION_RE.fullmatch(value or ""):
        raise InvalidArgument(f"{value[:90]!r} is not an image version (such as 1.2-7)")
    return value


def image_version(recipe_version: str, build_number: int) -> str:
    """The version a succeeded build is known by: the recipe's, then the
    build number, which orders every build of the name whatever the recipe says."""
    return f"{recipe_version}-{build_number}" if recipe_version else str(build_number)
