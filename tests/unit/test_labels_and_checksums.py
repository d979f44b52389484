from __future__ import annotations

import hashlib

import pytest

from kiln_common.errors import InvalidArgument
from kiln_storage.model import MAX_LABELS, Checksums, Hashers, validate_labels


def test_labels_are_sorted_and_kept() -> None:
    assert validate_labels({"version": "1.0", "name": "demo", "os": "debian"}) == {
        "name": "demo",
        "os": "debian",
        "version": "1.0",
    }


@pytest.mark.parametrize("key", ["", "Name", "../x", "a/b", "-lead", "x" * 64, "sp ace"])
def test_bad_label_keys_are_rejected(key: str) -> None:
    with pytest.raises(InvalidArgument, match="labels: key"):
        validate_labels({key: "v"})


def test_oversize_name_is_rejected_with_its_field() -> None:
    with pytest.raises(InvalidArgument, match=r"labels\.name: at most 128"):
        validate_labels({"name": "n" * 129})


def test_control_characters_in_values_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match="control characters"):
        validate_labels({"name": "a\nb"})


def test_too_many_labels_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match="at most"):
        validate_labels({f"k{i}": "v" for i in range(MAX_LABELS + 1)})


def test_declared_checksums_are_normalised_and_checked() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert Checksums(sha256=digest.upper()).validated().sha256 == digest
    with pytest.raises(InvalidArgument, match=r"checksums\.md5: expected 32 hex"):
        Checksums(md5="zz").validated()


def test_hashers_compute_all_four_digests() -> None:
    h = Hashers()
    h.update(b"hello ")
    h.update(memoryview(b"world"))
    got = h.result()
    for alg in ("sha256", "sha512", "sha1", "md5"):
        assert getattr(got, alg) == hashlib.new(alg, b"hello world").hexdigest()


def test_mismatches_name_each_wrong_algorithm() -> None:
    actual = Checksums(sha256="a" * 64, md5="b" * 32)
    declared = Checksums(sha256="c" * 64, md5="b" * 32)
    assert declared.mismatches(actual) == [f"sha256: declared {'c' * 64}, got {'a' * 64}"]
