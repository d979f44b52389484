"""`kiln market key create | ls | revoke`: endorser keys made, listed and
revoked in the keyring the publisher reads, or printed as the Secret it
mounts; the keyring then signs (and stops signing) as the publisher would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kiln_cli.main import main
from kiln_common.errors import NotFound
from kiln_market import Keyring

EMAIL = "ops@example.org"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["market", "key", *argv])
    return code, capsys.readouterr().out


def test_a_key_is_made_listed_and_revoked_in_the_keyring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ring = tmp_path / "keyring"
    code, out = run(capsys, "create", EMAIL, "--keyring", str(ring), "--json")
    made = json.loads(out)
    assert code == 0 and made["email"] == EMAIL
    assert Keyring.load(ring).signer(EMAIL).kid == made["kid"]
    (key_file,) = ring.glob("*.json")
    assert key_file.stat().st_mode & 0o077 == 0  # a private key: its owner's alone

    _, out = run(capsys, "ls", "--keyring", str(ring), "--json")
    assert json.loads(out) == [{"kid": made["kid"], "email": EMAIL, "signing": True,
                                "revoked": False}]  # fmt: skip
    code, _ = run(capsys, "revoke", made["kid"], "--keyring", str(ring))
    assert code == 0 and Keyring.load(ring).is_revoked(EMAIL, made["kid"])
    with pytest.raises(NotFound):
        Keyring.load(ring).signer(EMAIL)
    assert main(["market", "key", "revoke", "nope", "--keyring", str(ring)]) == 4


def test_create_o_yaml_prints_the_publishers_secret_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ring = tmp_path / "keyring"
    code, out = run(capsys, "create", EMAIL, "--keyring", str(ring), "-o", "yaml")
    assert code == 0 and not ring.exists()
    secret = yaml.safe_load(out)
    assert (secret["kind"], secret["metadata"]["name"]) == ("Secret", "publisher-endorsers")
    keys = Keyring()
    keys.merge(json.loads(secret["stringData"]["keyring.json"]), "the Secret")
    assert keys.signer(EMAIL).key.is_private


def test_a_bad_email_is_bad_input(tmp_path: Path) -> None:
    assert main(["market", "key", "create", "not an email", "--keyring", str(tmp_path)]) == 2


def test_a_json_keyring_file_is_made_as_a_file_and_rotate_adds_a_second_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ring = tmp_path / "ring.json"
    run(capsys, "create", EMAIL, "--keyring", str(ring))
    assert ring.is_file()
    first = Keyring.load(ring).signer(EMAIL).kid
    run(capsys, "create", EMAIL, "--keyring", str(ring))  # it has one: the same
    assert len(Keyring.load(ring).keys) == 1
    run(capsys, "create", EMAIL, "--keyring", str(ring), "--rotate")
    keys = Keyring.load(ring).keys
    assert len(keys) == 2 and first in keys
    assert main(["market", "key", "create", EMAIL, "-o", "yaml", "--json"]) == 2
