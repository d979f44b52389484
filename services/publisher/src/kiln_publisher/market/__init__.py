"""The marketplace: signed entries describing images held by the storage
service, kept in NATS JetStream (shared by every publisher replica), searched,
deprecated, expired, verified offline, and served as JSON and HTML.
See docs/marketplace.md."""

from kiln_publisher.market.entry import (
    DEFAULT_VALIDITY,
    SCHEMA,
    STATUSES,
    Checksums,
    Endorser,
    Entry,
    ImageFacts,
    identifier_for,
    new_entry,
)
from kiln_publisher.market.http import make_app
from kiln_publisher.market.keys import (
    EndorserKey,
    Keyring,
    generate_endorser,
    keyring_files,
    write_keyring,
)
from kiln_publisher.market.signing import Rejected, SignedEntry, canonical, sign, verify
from kiln_publisher.market.store import BUCKET, Market, Query

__all__ = [
    "BUCKET",
    "DEFAULT_VALIDITY",
    "SCHEMA",
    "STATUSES",
    "Checksums",
    "Endorser",
    "EndorserKey",
    "Entry",
    "ImageFacts",
    "Keyring",
    "Market",
    "Query",
    "Rejected",
    "SignedEntry",
    "canonical",
    "generate_endorser",
    "identifier_for",
    "keyring_files",
    "make_app",
    "new_entry",
    "sign",
    "verify",
    "write_keyring",
]
