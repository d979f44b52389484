"""The build host's apt sources, read once for the bootstrap and the appliance."""

from __future__ import annotations

from pathlib import Path

from kiln_builder import aptsources
from kiln_builder.bootstrap import host_mirror
from kiln_builder.isolation.appliance.network import host_mirrors


def test_both_styles_are_read_in_apts_order_and_other_names_skipped(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n"
    )
    (tmp_path / "sources.list.d/b.sources").write_text(
        "Types: deb\nURIs: http://two.example/debian-security\nSuites: bookworm-security\n"
    )
    (tmp_path / "sources.list.d/a.list").write_text("deb http://one.example/debian trixie main\n")
    (tmp_path / "sources.list.d/c.list.disabled").write_text("deb http://off.example/ubuntu x\n")

    found = aptsources.uris(aptsources.source_files(tmp_path))
    assert found == ["http://one.example/debian", "http://two.example/debian-security"]
    assert aptsources.archive_uri("debian-security", tmp_path) == found[1]
    assert aptsources.archive_uri("ubuntu", tmp_path) is None
    # The bootstrap's default mirror and the appliance's mirrors are these answers.
    assert host_mirror("debian", tmp_path) == "http://one.example/debian"
    assert host_mirrors(aptsources.source_files(tmp_path)) == found
