"""The durable event outbox: ordered, survives its process, adopted by the next."""

from __future__ import annotations

from pathlib import Path

from kiln_common.outbox import Outbox


def drain(box: Outbox) -> list[str]:
    sent = []
    while (item := box.oldest()) is not None:
        sent.append(item[0])
        box.sent(item[0])
    return sent


def test_events_leave_in_the_order_they_came(tmp_path: Path) -> None:
    box = Outbox(tmp_path, "builder-1")
    for n in range(5):
        box.add(f"e{n}", "kiln.events.build.step", b'{"n": %d}' % n)
    assert len(box) == 5
    first = box.oldest()
    assert first == ("e0", "kiln.events.build.step", b'{"n": 0}')
    assert drain(box) == ["e0", "e1", "e2", "e3", "e4"]
    assert len(box) == 0


def test_an_outbox_in_memory_keeps_order_too() -> None:
    box = Outbox(None, "storage")
    box.add("a", "s", b"1")
    box.add("b", "s", b"2")
    assert drain(box) == ["a", "b"]


def test_a_live_owner_keeps_its_outbox(tmp_path: Path) -> None:
    held = Outbox(tmp_path, "builder-1")
    held.add("mine", "s", b"1")
    other = Outbox(tmp_path, "builder-1")  # the same name: a directory of its own
    assert len(other) == 0 and drain(held) == ["mine"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["builder-1", "builder-1.1"]
    held.close()
    other.close()


def test_the_outbox_of_a_dead_publisher_is_adopted(tmp_path: Path) -> None:
    dead = Outbox(tmp_path, "host:101")
    dead.add("old-1", "s", b"1")
    dead.add("old-2", "s", b"2")
    dead.close()  # its process ended: the lock is free
    heir = Outbox(tmp_path, "host:202")
    heir.add("new-1", "s", b"3")
    assert drain(heir) == ["old-1", "old-2", "new-1"]
    assert [p.name for p in tmp_path.iterdir()] == ["host_202"]
