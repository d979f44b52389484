"""The recipe's `test:` section: the boot test and the commands run in the guest."""

from __future__ import annotations

from typing import Self

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from kiln_recipe.issues import Problem
from kiln_recipe.schema.base import (
    DEFAULT_COMMAND_TIMEOUT,
    MAX_BOOT_TIMEOUT,
    MAX_TEST_COMMANDS,
    MIN_BOOT_TIMEOUT,
    Command,
    Model,
    parse_seconds,
)


class BootTest(Model):
    timeout: int = 300  # seconds

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: object) -> int:
        seconds = parse_seconds(value)
        if not MIN_BOOT_TIMEOUT <= seconds <= MAX_BOOT_TIMEOUT:
            raise ValueError(f"{value} is out of range: from 10s to 1h")
        return seconds


class TestSpec(Model):
    boot: BootTest | None = Field(default_factory=BootTest)
    commands: list[Command] = Field(default=[], max_length=MAX_TEST_COMMANDS)
    command_timeout: int = DEFAULT_COMMAND_TIMEOUT  # seconds, for each command

    @field_validator("command_timeout", mode="before")
    @classmethod
    def _command_timeout(cls, value: object) -> int:
        seconds = parse_seconds(value)
        if not 1 <= seconds <= MAX_BOOT_TIMEOUT:
            raise ValueError(f"{value} is out of range: from 1s to 1h")
        return seconds

    @field_validator("boot", mode="before")
    @classmethod
    def _on_off(cls, value: object) -> object:
        # `boot: false` turns the boot test off; `boot: true` keeps the defaults.
        if isinstance(value, bool):
            return {} if value else None
        return value

    @model_validator(mode="after")
    def _commands_need_boot(self) -> Self:
        if self.commands and self.boot is None:
            raise Problem("commands run in the booted image: they need the boot test", "commands")
        return self
