"""The recipe's `disk:` and `outputs:` sections: the disk made of the tree and
the files written from it."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import (
    field_validator,
    model_validator,
)

from kiln_recipe.schema.base import (
    COMPRESSIONS,
    FORMATS,
    INTERNALLY_COMPRESSED,
    MAX_DISK,
    MIN_DISK,
    Compression,
    Format,
    Model,
    parse_size,
)


class Disk(Model):
    size: int
    filesystem: Literal["ext4", "ext3", "xfs"] = "ext4"
    partitioning: Literal["gpt", "mbr"] = "gpt"
    boot: Literal["bios"] = "bios"

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, value: object) -> int:
        size = parse_size(value)
        if not MIN_DISK <= size <= MAX_DISK:
            raise ValueError(f"{value} is out of range: from 512MiB to 2TiB")
        if size % 512:
            raise ValueError(f"{value} is not a whole number of 512-byte sectors")
        return size


class OutputSpec(Model):
    """One output file, written in recipes as FORMAT[.COMPRESSION] ("raw.xz")."""

    format: Format
    compression: Compression | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        fmt, dot, compression = value.partition(".")
        if fmt not in FORMATS:
            raise ValueError(
                f"unknown format {fmt!r}: expected FORMAT[.COMPRESSION] with FORMAT one of "
                + ", ".join(FORMATS)
            )
        if dot and compression not in COMPRESSIONS:
            raise ValueError(
                f"unknown compression {compression!r}: expected one of " + ", ".join(COMPRESSIONS)
            )
        return {"format": fmt, "compression": compression or None}

    @model_validator(mode="after")
    def _outer_compression(self) -> Self:
        if self.compression is not None and self.format in INTERNALLY_COMPRESSED:
            hint = " (use qcow2c for a compressed qcow2)" if self.format == "qcow2" else ""
            raise ValueError(f"{self.format} takes no outer compression{hint}")
        return self

    @property
    def name(self) -> str:
        return f"{self.format}.{self.compression}" if self.compression else self.format
