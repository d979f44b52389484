"""`kiln market verify --file`: which newest statement an entry is held
against (the publisher's current one, a --newest file, or none when the
publisher is unreachable, said on stderr), decided without any server; and
`kiln market verify ID --endorser EMAIL`: that endorser's entry, not the
newest of any endorser's."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from market_support import ENDORSER, endorser_ring, facts_for

from kiln_cli.main import build_parser
from kiln_cli.publish_cmd import PublishUsageError, cmd_verify, newest_for
from kiln_client.discovery import NotRunning
from kiln_common.errors import NotFound, Unavailable
from kiln_market import Endorser, Entry, Keyring, Rejected, SignedEntry, new_entry, sign

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def statements(ring: Keyring, data: bytes = b"image") -> tuple[SignedEntry, SignedEntry]:
    """An entry and the deprecation that supersedes it."""
    signer = ring.signer(ENDORSER)
    first = new_entry(facts_for(data), Endorser(signer.email, signer.kid), NOW, timedelta(days=9))
    deprecated = first.successor(NOW + timedelta(hours=1), deprecated=True)
    return sign(first, signer), sign(deprecated, signer)


def args_for(tmp: Path, document: bytes, newest: bytes | None = None) -> argparse.Namespace:
    (tmp / "entry.json").write_bytes(document)
    if newest is not None:
        (tmp / "newest.json").write_bytes(newest)
    return argparse.Namespace(
        identifier="",
        file=tmp / "entry.json",
        newest=tmp / "newest.json" if newest is not None else None,
        keyring=[tmp / "keys"],
        json=False,
        endorser="",
    )


def test_an_entry_older_than_the_publishers_current_one_is_refused(tmp_path: Path) -> None:
    ring = endorser_ring(tmp_path / "keys")
    first, deprecated = statements(ring)
    asked: list[Entry] = []

    def fetch(entry: Entry) -> bytes | None:
        asked.append(entry)
        return deprecated.document

    with pytest.raises(Rejected) as caught:
        cmd_verify(args_for(tmp_path, first.document), fetch)
    assert caught.value.reason == "stale"
    assert asked == [first.entry]


def test_the_current_entry_passes_quietly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ring = endorser_ring(tmp_path / "keys")
    _, deprecated = statements(ring)
    assert cmd_verify(args_for(tmp_path, deprecated.document), lambda _: deprecated.document) == 0
    out, err = capsys.readouterr()
    assert "signature good" in out and "(deprecated)" in out and err == ""


@pytest.mark.parametrize(
    "failure",
    [Unavailable("publisher unavailable"), NotRunning("Kiln is not running")],
)
def test_offline_it_checks_the_signature_only_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], failure: Exception
) -> None:
    ring = endorser_ring(tmp_path / "keys")
    first, _ = statements(ring)

    def unreachable(entry: Entry) -> bytes | None:
        raise failure

    assert cmd_verify(args_for(tmp_path, first.document), unreachable) == 0
    err = capsys.readouterr().err
    assert "unreachable" in err and "signature, endorser and revocation only" in err
    assert "--newest FILE" in err


def test_a_newest_file_checks_fully_offline(tmp_path: Path) -> None:
    ring = endorser_ring(tmp_path / "keys")
    first, deprecated = statements(ring)

    def never(entry: Entry) -> bytes | None:
        raise AssertionError("--newest must not ask the publisher")

    with pytest.raises(Rejected) as caught:
        cmd_verify(args_for(tmp_path, first.document, deprecated.document), never)
    assert caught.value.reason == "stale"
    assert cmd_verify(args_for(tmp_path, deprecated.document, first.document), never) == 0


def test_a_newest_file_about_another_image_is_a_usage_error(tmp_path: Path) -> None:
    ring = endorser_ring(tmp_path / "keys")
    first, _ = statements(ring)
    other, _ = statements(ring, b"another image")
    with pytest.raises(PublishUsageError, match="--newest is about"):
        newest_for(first.entry, ring, other.document, lambda _: None)


def test_an_untrusted_newer_document_from_the_publisher_rejects_nothing(tmp_path: Path) -> None:
    ring = endorser_ring(tmp_path / "keys")
    first, deprecated = statements(ring)
    forged = json.loads(deprecated.document)
    forged["entry"]["sequence"] = 99
    newest, note = newest_for(first.entry, ring, None, lambda _: json.dumps(forged).encode())
    assert newest is None and "not trusted" in note


def test_an_entry_the_publisher_does_not_hold_is_checked_and_noted(tmp_path: Path) -> None:
    ring = endorser_ring(tmp_path / "keys")
    first, _ = statements(ring)
    newest, note = newest_for(first.entry, ring, None, lambda _: None)
    assert newest is None and "holds no entry" in note


@pytest.mark.parametrize("which", ["file", "newest"])
def test_a_document_it_cannot_read_is_a_usage_error(tmp_path: Path, which: str) -> None:
    ring = endorser_ring(tmp_path / "keys")
    first, deprecated = statements(ring)
    args = args_for(tmp_path, first.document, deprecated.document)
    setattr(args, which, tmp_path / "missing.json")
    with pytest.raises(PublishUsageError, match=r"missing\.json: No such file"):
        cmd_verify(args, lambda entry: None)


def test_an_identifier_with_an_endorser_checks_that_endorsers_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ring = endorser_ring(tmp_path / "keys", ENDORSER, "other@example.org")
    mine, _ = statements(ring)
    signer = ring.signer("other@example.org")
    theirs = sign(replace(mine.entry, endorser=Endorser(signer.email, signer.kid)), signer)
    by = {ENDORSER: mine.document, "other@example.org": theirs.document, "": theirs.document}
    asked: list[tuple[str, str]] = []

    def lookup(identifier: str, endorser: str) -> bytes:
        asked.append((identifier, endorser))
        return by[endorser]

    argv = ["market", "verify", mine.identifier, "--endorser", ENDORSER, "--keyring"]
    args = build_parser().parse_args([*argv, str(tmp_path / "keys")])
    assert cmd_verify(args, lookup=lookup) == 0
    assert asked == [(mine.identifier, ENDORSER)]
    assert f"endorsed by {ENDORSER}" in capsys.readouterr().out

    # A publisher that answers with another endorser's statement passes nothing.
    with pytest.raises(NotFound, match=f"endorsed by {ENDORSER}"):
        cmd_verify(args, lookup=lambda identifier, endorser: theirs.document)


def test_an_endorser_with_a_file_is_a_usage_error(tmp_path: Path) -> None:
    endorser_ring(tmp_path / "keys")
    args = args_for(tmp_path, b"{}")
    args.endorser = ENDORSER
    with pytest.raises(PublishUsageError, match="--endorser goes with IDENTIFIER"):
        cmd_verify(args, lambda entry: None)
