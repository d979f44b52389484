"""The appliance's shell states kiln_builder.rootfs's rule with the same lists
(tests/integration/test_root_discovery.py compares their answers on disks)."""

from __future__ import annotations

import re

from kiln_builder import rootfs


def test_the_shell_names_the_same_types_and_marks() -> None:
    text = rootfs.SHELL.read_text()
    types = re.search(r'^ROOT_TYPES="([^"]*)"', text, re.M)
    marks = re.search(r'^ROOT_MARKS="([^"]*)"', text, re.M)
    assert types and tuple(types.group(1).split()) == rootfs.ROOT_TYPES
    assert marks and tuple(marks.group(1).split()) == rootfs.ROOT_MARKS


def test_init_sources_the_shared_rule_and_has_none_of_its_own() -> None:
    init = (rootfs.SHELL.parent / "init.sh").read_text()
    assert ". /usr/local/lib/kiln/findroot.sh" in init
    body = init[init.index("find_root() {") :]
    body = body[: body.index("\n}\n")]
    assert "find_root_on" in body and "blkid" not in body and "mount" not in body
