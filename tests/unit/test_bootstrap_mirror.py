"""Where a bootstrap's mirror comes from: the recipe, else the builder's
setting, else the build host's apt sources; none of them is a clear refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kiln_builder.bootstrap import host_mirror, resolve_mirror, spec_for
from kiln_builder.service.settings import BuilderSettings
from kiln_common.errors import FailedPrecondition

DEB822 = """\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""
ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://lines.example/debian bookworm main
deb http://lines.example/ubuntu noble main
"""


def apt_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_a_deb822_source_gives_the_mirror_of_each_archive(tmp_path: Path) -> None:
    apt = apt_dir(tmp_path, {"sources.list.d/debian.sources": DEB822})
    assert host_mirror("debian", apt) == "http://mirror.example/debian"
    assert host_mirror("debian-security", apt) == "http://mirror.example/debian-security"
    assert host_mirror("ubuntu", apt) is None


def test_a_one_line_source_gives_the_mirror_options_and_comments_aside(tmp_path: Path) -> None:
    apt = apt_dir(tmp_path, {"sources.list": ONE_LINE})
    assert host_mirror("debian", apt) == "http://lines.example/debian"
    assert host_mirror("ubuntu", apt) == "http://lines.example/ubuntu"


def test_sources_apt_does_not_read_are_ignored(tmp_path: Path) -> None:
    apt = apt_dir(tmp_path, {"sources.list.d/debian.sources.disabled": DEB822})
    assert host_mirror("debian", apt) is None
    (tmp_path / "sources.list.d/other.list").write_text(ONE_LINE)
    assert host_mirror("debian", apt) == "http://lines.example/debian"


def test_the_recipe_mirror_wins_then_the_setting() -> None:
    recipe, setting = "http://recipe.example/debian", "http://setting.example/debian"
    assert resolve_mirror("debian", recipe, setting) == recipe
    assert resolve_mirror("debian", None, setting) == setting
    spec = spec_for("debian", "bookworm", "amd64", None, 1, default_mirror=setting)
    assert spec.mirror == setting


def test_the_host_apt_source_is_used_when_neither_names_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apt = apt_dir(tmp_path, {"sources.list.d/debian.sources": DEB822})
    monkeypatch.setattr("kiln_builder.aptsources.APT_DIR", apt)
    assert resolve_mirror("debian", None) == "http://mirror.example/debian"


def test_no_mirror_anywhere_is_refused_saying_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kiln_builder.aptsources.APT_DIR", apt_dir(tmp_path, {}))
    with pytest.raises(FailedPrecondition, match=r"set `mirror:` under from\.bootstrap"):
        resolve_mirror("ubuntu", None)


def test_the_default_mirror_setting_must_be_an_http_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_BUILDER_DEFAULT_MIRROR", "mirror.example/debian")
    with pytest.raises(ValidationError, match="default_mirror"):
        BuilderSettings()
    monkeypatch.setenv("KILN_BUILDER_DEFAULT_MIRROR", "https://mirror.example/debian")
    assert BuilderSettings().default_mirror == "https://mirror.example/debian"
