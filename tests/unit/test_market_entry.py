"""Marketplace entries: the StratusLab identifier, status over time, and the
field checks a document from outside goes through."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from market_support import facts_for

from kiln_common.errors import InvalidArgument
from kiln_market import Endorser, Entry, identifier_for, new_entry

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
ENDORSER = Endorser("ops@example.org", "kid")


def test_the_identifier_is_the_sha1_in_27_base64_digits_most_significant_first() -> None:
    assert identifier_for("0" * 40) == "A" * 27
    assert identifier_for("0" * 39 + "1") == "A" * 26 + "B"
    assert identifier_for("0" * 38 + "40") == "A" * 25 + "BA"  # 64 = "BA" in base 64
    # 160 bits = 26 digits of 6 bits + 4 bits: the top digit is at most 15 ("P").
    assert identifier_for("f" * 40) == "P" + "_" * 26
    sha1 = hashlib.sha1(b"image").hexdigest()
    assert identifier_for(sha1) == identifier_for(sha1.upper())
    decoded = 0
    for char in identifier_for(sha1):
        decoded = (
            decoded * 64
            + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(char)
        )
    assert decoded == int(sha1, 16)


@pytest.mark.parametrize("bad", ["", "abc", "g" * 40, "0" * 41])
def test_a_bad_sha1_has_no_identifier(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="40 hex digits"):
        identifier_for(bad)


def test_a_new_entry_is_valid_for_180_days_by_default_then_expired() -> None:
    entry = new_entry(facts_for(b"image"), ENDORSER, NOW, timedelta(days=180))
    assert entry.identifier == identifier_for(hashlib.sha1(b"image").hexdigest())
    assert entry.valid_until == "2027-05-29T12:00:00.000000Z"
    assert entry.status(NOW) == "valid"
    assert entry.status(NOW + timedelta(days=179, hours=23)) == "valid"
    assert entry.status(NOW + timedelta(days=180)) == "expired"


def test_deprecation_outranks_validity_and_the_expired_mark_outranks_the_clock() -> None:
    entry = new_entry(facts_for(b"image"), ENDORSER, NOW, timedelta(days=1))
    assert entry.successor(NOW, deprecated=True).status(NOW) == "deprecated"
    expired = entry.successor(NOW, expired=True)
    assert expired.status(NOW) == "expired" and expired.sequence == entry.sequence + 1
    assert expired.successor(NOW, deprecated=True).status(NOW) == "deprecated"


def test_an_entry_round_trips_through_its_dict() -> None:
    entry = new_entry(facts_for(b"image"), ENDORSER, NOW, timedelta(days=1))
    assert Entry.from_dict(entry.to_dict()) == entry
    assert entry.to_dict()["schema"] == "kiln.market.entry/v1"


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"schema": "kiln.market.entry/v9"}, "unknown entry schema"),
        ({"size": "12"}, "size must be a non-negative integer"),
        ({"deprecated": "no"}, "deprecated must be true or false"),
        ({"identifier": "A" * 27}, "not derived from its SHA-1"),
        ({"created": "yesterday"}, "not an RFC 3339 time"),
        ({"title": None}, "title must be a string"),
    ],
)
def test_a_malformed_entry_is_refused(change: dict[str, object], complaint: str) -> None:
    data = {**new_entry(facts_for(b"image"), ENDORSER, NOW, timedelta(days=1)).to_dict(), **change}
    with pytest.raises(InvalidArgument, match=complaint):
        Entry.from_dict(data)


def test_an_entry_with_no_version_leaves_it_out_of_its_document() -> None:
    entry = new_entry(facts_for(b"image"), ENDORSER, NOW, timedelta(days=1))
    # As entries signed before versions existed: no key at all, so their
    # canonical bytes, and so their signatures, are what they were.
    assert entry.version is None and "version" not in entry.to_dict()
    assert Entry.from_dict(entry.to_dict()) == entry


def test_an_image_version_is_kept_and_round_trips() -> None:
    facts = dataclasses.replace(facts_for(b"image"), version="1.2-7")
    entry = new_entry(facts, ENDORSER, NOW, timedelta(days=1))
    assert entry.version == "1.2-7" and entry.to_dict()["version"] == "1.2-7"
    assert Entry.from_dict(entry.to_dict()) == entry
    with pytest.raises(InvalidArgument, match="version must be a string"):
        Entry.from_dict({**entry.to_dict(), "version": 7})


def test_a_missing_field_is_refused() -> None:
    data = new_entry(facts_for(b"image"), ENDORSER, NOW, timedelta(days=1)).to_dict()
    del data["checksums"]
    with pytest.raises(InvalidArgument, match="not a marketplace entry"):
        Entry.from_dict(data)
