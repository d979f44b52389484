"""The marketplace's entry, as every party sees it: the facts about one image
(entry), the endorsers' keys (keys), and the signature over them that anyone can
check offline (signing). The publisher keeps, serves and signs entries; the CLI
verifies them; both use this package, and neither reaches into the other.
See docs/marketplace.md."""

from kiln_market.entry import (
    DEFAULT_VALIDITY,
    SCHEMA,
    STATUSES,
    Checksums,
    Endorser,
    Entry,
    ImageFacts,
    identifier_for,
    new_entry,
    parse_time,
)
from kiln_market.keys import (
    EndorserKey,
    Keyring,
    generate_endorser,
    keyring_files,
    write_keyring,
)
from kiln_market.signing import Rejected, SignedEntry, canonical, sign, verify

__all__ = [
    "DEFAULT_VALIDITY",
    "SCHEMA",
    "STATUSES",
    "Checksums",
    "Endorser",
    "EndorserKey",
    "Entry",
    "ImageFacts",
    "Keyring",
    "Rejected",
    "SignedEntry",
    "canonical",
    "generate_endorser",
    "identifier_for",
    "keyring_files",
    "new_entry",
    "parse_time",
    "sign",
    "verify",
    "write_keyring",
]
