"""What the publisher makes of a stored artifact, its build's recipe and a
publish request: Glance's ImageSource, the marketplace's ImageFacts, the
records kept in NATS, and the CLI's requests. No services."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from kiln_cli.main import build_parser
from kiln_cli.publish_cmd import PublishUsageError, request_from
from kiln_common.artifacts import Artifact, Checksums
from kiln_common.errors import FailedPrecondition, InvalidArgument
from kiln_common.publications import GlanceTarget, MarketplaceTarget, Publication, PublishRequest
from kiln_publisher import facts
from kiln_publisher.model import DONE, FAILED, RUNNING, Result, record_bytes, record_of
from kiln_publisher.servicer import publish_from
from kiln_publisher.settings import find_clouds_yaml
from kiln_recipe.source import RecipeSource

SUMS = Checksums(sha256="a" * 64, sha512="b" * 128, sha1="c" * 40, md5="d" * 32)
RECIPE = """\
name: web
version: "2"
from:
  bootstrap: {distro: debian, release: bookworm, arch: arm64}
publish:
  glance: mycloud
"""


def artifact(fmt: str = "qcow2", **labels: str) -> Artifact:
    base = {"name": "web", "version": "2", "format": fmt, "build-id": "b1"}
    return Artifact(id="a1", size=100, checksums=SUMS, labels={**base, **labels})


async def nothing() -> AsyncIterator[bytes]:
    yield b""


def recipe() -> facts.RecipeFacts:
    doc = facts.recipe_document(RecipeSource(yaml=RECIPE))
    return facts.recipe_facts(doc, "e" * 64)


def test_the_recipe_gives_the_os_and_the_publish_targets() -> None:
    found = recipe()
    assert (found.os, found.os_version, found.arch) == ("debian", "bookworm", "arm64")
    assert [t.cloud for t in found.publish.glance] == ["mycloud"]
    assert found.publish.marketplace is None


def test_an_image_source_carries_glance_and_kiln_properties() -> None:
    source = facts.image_source(artifact(**{"base-sha256": "f" * 64}), "http://x", nothing,
                                recipe(), "9" * 64)  # fmt: skip
    assert (source.name, source.disk_format, source.sha512) == ("web-2", "qcow2", "b" * 128)
    props = source.properties
    assert props["os_distro"] == "debian" and props["os_version"] == "bookworm"
    assert props["architecture"] == "aarch64" and props["hw_disk_bus"] == "virtio"
    assert props["kiln_build_id"] == "b1" and props["kiln_artifact_id"] == "a1"
    assert props["kiln_recipe_sha256"] == "e" * 64 and props["kiln_sbom_sha256"] == "9" * 64
    assert props["kiln_base_sha256"] == "f" * 64
    assert "kiln_version" not in props  # an artifact stored before versions has no label


def test_the_image_version_label_becomes_kiln_version_and_the_entrys_version() -> None:
    labelled = artifact(**{"kiln-version": "2-7"})
    source = facts.image_source(labelled, "http://x", nothing, recipe())
    assert source.properties["kiln_version"] == "2-7"
    assert facts.image_facts(labelled, (), recipe(), "ops@example.org").version == "2-7"
    assert facts.image_facts(artifact(), (), recipe(), "ops@example.org").version == ""


def test_glance_takes_only_disk_images() -> None:
    assert facts.image_source(artifact("qcow2c"), "u", nothing, recipe()).disk_format == "qcow2"
    for fmt in ("raw.xz", "tar.zst", "ext4"):
        with pytest.raises(FailedPrecondition, match="Glance takes"):
            facts.image_source(artifact(fmt), "u", nothing, recipe())


def test_image_facts_split_format_and_compression() -> None:
    found = facts.image_facts(artifact("raw.xz"), ("http://x",), recipe(), "ops@example.org")
    assert (found.format, found.compression, found.hypervisor) == ("raw", "xz", "kvm")
    assert (found.md5, found.sha1, found.title) == ("d" * 32, "c" * 40, "web-2")
    with pytest.raises(FailedPrecondition, match="MD5/SHA-1"):
        bare = dataclasses.replace(artifact(), checksums=dataclasses.replace(SUMS, md5=""))
        facts.image_facts(bare, (), recipe(), "ops@example.org")


def test_a_publication_is_done_when_every_target_is() -> None:
    pub = Publication(id="p", artifact_id="a1", build_id="")
    glance = Result("a1", "glance", "c")
    pub = pub.with_result(Result("a1", "glance", "c", state=RUNNING))
    assert pub.state == RUNNING and len(pub.results) == 1
    pub = pub.with_result(Result("a1", "glance", "c", state=DONE, image_id="i"))
    assert pub.state == DONE and [r.key for r in pub.results] == [glance.key]
    pub = pub.with_result(Result("a1", "marketplace", "e", state=FAILED, error="no"))
    assert pub.state == FAILED
    assert record_of(record_bytes(pub)) == pub


def test_a_request_is_checked_by_the_recipe_schema() -> None:
    request = PublishRequest(
        artifact_id="a1",
        glance=(GlanceTarget(cloud="c", keep=2),),
        marketplace=MarketplaceTarget(endorser="ops@example.org", valid_for=timedelta(days=7)),
    )
    publish = publish_from(request)
    assert publish.glance[0].keep == 2 and publish.glance[0].visibility == "private"
    assert publish.marketplace is not None and publish.marketplace.valid_for == 7 * 86400
    with pytest.raises(InvalidArgument, match="retire"):
        publish_from(PublishRequest(glance=(GlanceTarget(cloud="c", retire="burn"),)))


def cli(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_kiln_publish_needs_a_target() -> None:
    with pytest.raises(PublishUsageError, match="--glance CLOUD and/or --marketplace"):
        request_from(cli("publish", "x"), as_build=False)
    with pytest.raises(PublishUsageError, match="--endorser goes with --marketplace"):
        request_from(cli("publish", "x", "--glance", "c", "--endorser", "a@b.c"), as_build=False)


def test_kiln_publish_builds_the_request() -> None:
    args = cli("publish", "B", "--glance", "a", "--glance", "b", "--name", "n",
               "--marketplace", "--endorser", "ops@example.org")  # fmt: skip
    as_artifact = request_from(args, as_build=False)
    assert as_artifact.artifact_id == "B" and not as_artifact.build_id
    assert [(t.cloud, t.name, t.visibility) for t in as_artifact.glance] == [
        ("a", "n", "private"),
        ("b", "n", "private"),
    ]
    assert as_artifact.marketplace is not None
    assert as_artifact.marketplace.endorser == "ops@example.org"
    assert request_from(args, as_build=True).build_id == "B"
    assert request_from(cli("publish", "B", "--glance", "a"), False).marketplace is None


def test_every_market_verb_takes_json() -> None:
    for argv in (("search",), ("show", "I"), ("verify", "I"), ("deprecate", "I")):
        assert cli("market", *argv, "--json").json
    assert cli("publish", "x", "--marketplace", "--json").json


def test_clouds_yaml_is_found_the_way_openstacksdk_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OS_CLIENT_CONFIG_FILE", raising=False)
    assert find_clouds_yaml() in (None, Path("/etc/openstack/clouds.yaml"))
    user = tmp_path / "home/.config/openstack/clouds.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("clouds: {}\n")
    assert find_clouds_yaml() == user
    (tmp_path / "clouds.yaml").write_text("clouds: {}\n")
    assert find_clouds_yaml() == Path("clouds.yaml")  # the working directory first
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", "/x/clouds.yaml")
    assert find_clouds_yaml() == Path("/x/clouds.yaml")
    assert find_clouds_yaml(Path("/given")) == Path("/given")


def test_glance_gets_only_a_builds_disk_images() -> None:
    assert facts.glance_can_take(artifact("qcow2")) and facts.glance_can_take(artifact("raw"))
    assert not facts.glance_can_take(artifact("raw.xz"))
    assert not facts.glance_can_take(artifact("tar.zst"))


def test_the_guest_agent_property_says_yes_only_when_the_recipe_installs_it() -> None:
    from kiln_publisher.facts import recipe_facts

    base = {"from": {"bootstrap": {"distro": "debian", "release": "bookworm"}}}
    assert not recipe_facts(base).guest_agent
    assert recipe_facts({**base, "packages": ["curl", "qemu-guest-agent"]}).guest_agent
