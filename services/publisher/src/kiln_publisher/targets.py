"""What a publication publishes where: the request, the targets one artifact
gets, a Glance target in the GlancePublisher's terms, and each result's name."""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln_common.artifacts import Artifact
from kiln_publisher import facts
from kiln_publisher.glance import GlanceTarget
from kiln_recipe.schema import GlancePublish, Publish


@dataclass(frozen=True)
class Request:
    artifact_id: str = ""
    build_id: str = ""
    publish: Publish = field(default_factory=Publish)


def publish_for(request: Request, artifact: Artifact) -> Publish:
    """The request's targets for one artifact: a build's raw.xz or tar output
    goes to the marketplace only; its qcow2 (or raw) output is the one Glance
    gets."""
    if request.build_id and not facts.glance_can_take(artifact):
        return request.publish.model_copy(update={"glance": []})
    return request.publish


def on_success(publish: Publish) -> Publish:
    """The targets a build's success publishes: all but the Glance targets
    that follow a channel (those are published when their channel moves)."""
    return publish.model_copy(update={"glance": [t for t in publish.glance if t.channel is None]})


def following(publish: Publish, channel: str) -> Publish:
    """The Glance targets that follow channel, alone (the marketplace entry
    was made when the build succeeded)."""
    chosen = [t for t in publish.glance if t.channel == channel]
    return publish.model_copy(update={"glance": chosen, "marketplace": None})


def revoke_how(retire: str) -> str:
    """How a revoked build's image is retired where the target retires with
    `retire`: hidden or deactivated, never deleted (people may need to
    inspect what was revoked)."""
    return "deactivate" if retire in ("deactivate", "delete") else "hide"


def glance_target(t: GlancePublish, reveal: bool = False) -> GlanceTarget:
    return GlanceTarget(
        cloud=t.cloud,
        region=t.region,
        name=t.name,
        visibility=t.visibility,
        tags=tuple(t.tags),
        properties=dict(t.properties),
        min_disk=t.min_disk,
        min_ram=t.min_ram,
        keep=t.keep,
        retire=t.retire,
        reveal=reveal,
    )


def target_name(cloud: str, region: str | None, name: str | None = None) -> str:
    """cloud[/region][:name]: one result per image a publication makes (a recipe
    may publish two names to one cloud)."""
    where = f"{cloud}/{region}" if region else cloud
    return f"{where}:{name}" if name else where
