"""The processes a benchmark started, for sampling their memory: every
descendant of this process, and every process of a session one of them opened
(a tool that setsids away, such as libvirt's QEMU or a daemonised helper)."""

from __future__ import annotations

import os


def proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, session id) of every process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return table


class ProcessTree:
    def __init__(self) -> None:
        self._sessions: set[int] = set()
        self._own_session = os.getsid(0)

    def pids(self) -> set[int]:
        table = proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        tree: set[int] = set()
        todo = list(children.get(os.getpid(), []))
        while todo:
            pid = todo.pop()
            if pid not in tree:
                tree.add(pid)
                todo += children.get(pid, [])
        self._sessions |= {table[p][1] for p in tree} - {self._own_session}
        return tree | {p for p, (_, sid) in table.items() if sid in self._sessions}
