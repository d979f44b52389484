"""The one way into an image's tree from the build host (see reader.py for why
and how): `ImageRoot` reads and writes, `ImageReader` only reads; `at` holds the
system calls both stand on."""

from kiln_builder.imageroot.at import MAX_DEPTH, MAX_LINKS, MAX_READ
from kiln_builder.imageroot.reader import ImageReader
from kiln_builder.imageroot.root import ImageRoot

__all__ = ["MAX_DEPTH", "MAX_LINKS", "MAX_READ", "ImageReader", "ImageRoot"]
