"""pytest imports test modules by basename (rootdir-relative packages are not
used here): two test files of one name in different tiers stop the whole run
at collection, as CI found twice."""

from __future__ import annotations

from collections import Counter

from support import REPO


def test_every_test_module_has_a_name_of_its_own() -> None:
    names = Counter(path.name for path in (REPO / "tests").rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
