"""The order a free build slot tries the tenants' queues in."""

from __future__ import annotations

from kiln_builder.service.schedule import order


def test_the_tenant_with_fewest_running_builds_goes_first() -> None:
    live = {"a": 100, "b": 1, "c": 3}
    assert order(live, {"a": 2, "b": 1}, {}) == ["c", "b", "a"]


def test_among_equals_the_one_started_longest_ago_goes_first() -> None:
    live = {"a": 100, "b": 1}
    assert order(live, {}, {"a": 10.0}) == ["b", "a"]  # b never started here
    assert order(live, {}, {"a": 10.0, "b": 20.0}) == ["a", "b"]


def test_a_queued_count_does_not_buy_a_place() -> None:
    """A hundred queued builds go no earlier than one."""
    assert order({"big": 100, "small": 1}, {}, {}) == ["big", "small"]  # by name, then turns
    assert order({"big": 100, "small": 1}, {}, {"big": 1.0}) == ["small", "big"]
