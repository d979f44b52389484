"""The appliance's report channel: the lines its init (init.sh) writes to the
second serial port, which the host reads as QEMU's standard output.

    KILN READY <kernel release>          the appliance is up
    KILN ROOT <device> <fstype>          the image's root it mounted
    KILN INFO <text>                     anything worth a line in the build log
    KILN STEP <n> START <name>           a step begins
    KILN LOG <n> <text>                  one line of the step's output
    KILN STEP <n> OK | FAIL <status>     how it ended
    KILN DONE OK | FAIL <message>        the job's end, before power-off

Anything else on the channel (there should be nothing) is ignored."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

LOG_TAIL = 20


@dataclass
class StepReport:
    number: str
    name: str
    status: str = "running"  # running | ok | failed
    exit_status: int | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL))


@dataclass
class Report:
    """What the channel said so far; feed() it one line at a time."""

    ready: str | None = None  # the appliance kernel's release once it is up
    root: str | None = None
    steps: list[StepReport] = field(default_factory=list)
    done: bool = False
    ok: bool = False
    message: str = ""
    info: list[str] = field(default_factory=list)

    def feed(self, line: str) -> str | None:
        """Takes one line; returns the text worth a build-log line, if any."""
        words = line.rstrip("\r\n").split(" ", 2)
        if len(words) < 2 or words[0] != "KILN":
            return None
        kind = words[1]
        # STEP <n> START <name> keeps its name whole; the others split once more.
        rest = (words[2] if len(words) > 2 else "").split(" ", 2 if kind == "STEP" else 1)
        if kind == "READY":
            self.ready = " ".join(rest)
            return f"appliance up (kernel {self.ready})"
        if kind == "ROOT":
            self.root = " ".join(rest)
            return f"image root: {self.root}"
        if kind == "INFO":
            text = " ".join(rest)
            self.info.append(text)
            return text
        if kind == "STEP" and len(rest) >= 2:
            return self._step(rest[0], rest[1], rest[2] if len(rest) > 2 else "")
        if kind == "LOG" and rest:
            return self._log(rest[0], " ".join(rest[1:]))
        if kind == "DONE" and rest:
            self.done = True
            self.ok = rest[0] == "OK"
            self.message = " ".join(rest[1:])
            return None if self.ok else f"appliance: {self.message}"
        return None

    def _find(self, number: str) -> StepReport | None:
        return next((s for s in reversed(self.steps) if s.number == number), None)

    def _step(self, number: str, what: str, extra: str) -> str | None:
        if what == "START":
            self.steps.append(StepReport(number, extra))
            return f"==> {extra}"
        step = self._find(number)
        if step is None:
            return None
        if what == "OK":
            step.status, step.exit_status = "ok", 0
            return None
        if what == "FAIL":
            step.status = "failed"
            step.exit_status = int(extra) if extra.lstrip("-").isdigit() else None
            return f"{step.name} failed (exit status {extra})"
        return None

    def _log(self, number: str, text: str) -> str | None:
        step = self._find(number)
        if step is not None:
            step.tail.append(text)
        return text

    def failed_step(self) -> StepReport | None:
        return next((s for s in self.steps if s.status != "ok"), None)
