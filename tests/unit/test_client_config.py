"""The client's configuration file (kiln_client.config): a context's
addresses, token and CA are the fallbacks of the KILN_* variables, which
override them; KILN_CONTEXT (the CLI's --context) picks another context;
`kiln config show` says where each value comes from, `use-context` switches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln_cli.main import main
from kiln_client import config, credentials, discovery
from kiln_common.errors import InvalidArgument

FILE = """\
current-context: prod
contexts:
  prod:
    builder: builder.prod.example:50052
    token_file: TOKEN
    ca_file: ~/prod-ca.pem
  lab:
    builder: 127.0.0.1:50052
    output: json
"""


@pytest.fixture
def configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    token = tmp_path / "prod.token"
    token.write_text("kiln_prodtoken\n")
    path = tmp_path / "config.yaml"
    path.write_text(FILE.replace("TOKEN", str(token)))
    for name in ("KILN_BUILDER", "KILN_TOKEN", "KILN_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    # Set (empty), so the --context the CLI writes into the environment is undone.
    monkeypatch.setenv("KILN_CONTEXT", "")
    monkeypatch.setenv("KILN_CONFIG", str(path))
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))  # no `kiln up` stack
    monkeypatch.setenv("HOME", str(tmp_path))
    # Only the kiln command reads the file: as main() would (the tests ran in
    # an order where another test's main() had done it).
    monkeypatch.setattr(config, "_enabled", True)
    return path


def test_a_context_gives_addresses_token_and_ca_and_variables_override_it(
    configured: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert discovery.address("builder") == "builder.prod.example:50052"
    assert credentials.token() == "kiln_prodtoken"
    assert credentials.ca_file() == configured.parent / "prod-ca.pem"
    monkeypatch.setenv("KILN_BUILDER", "10.0.0.1:1")
    monkeypatch.setenv("KILN_TOKEN", "kiln_fromenv")
    assert discovery.address("builder") == "10.0.0.1:1"
    assert credentials.token() == "kiln_fromenv"
    with pytest.raises(discovery.NotRunning):  # neither the context nor a stack names it
        discovery.address("storage")


def test_kiln_context_picks_another_and_an_unknown_one_is_refused(
    configured: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_CONTEXT", "lab")
    assert discovery.address("builder") == "127.0.0.1:50052"
    monkeypatch.setenv("KILN_CONTEXT", "nope")
    with pytest.raises(InvalidArgument, match="no context 'nope'"):
        discovery.address("builder")


def test_config_show_says_where_each_value_comes_from(
    configured: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KILN_BUILDER", "10.0.0.1:1")
    assert main(["config", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    rows = {r["setting"]: r for r in shown["settings"]}
    assert shown["context"] == "prod"
    assert (rows["builder"]["value"], rows["builder"]["source"]) == (
        "10.0.0.1:1",
        "env KILN_BUILDER",
    )
    assert rows["token"]["value"] == "set" and "kiln_prodtoken" not in json.dumps(shown)
    assert rows["ca_file"]["source"] == f"{configured} context prod"


def test_use_context_switches_and_a_contexts_output_default_applies(
    configured: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "use-context", "lab"]) == 0
    capsys.readouterr()
    assert config.current().name == "lab"
    assert main(["config", "show"]) == 0  # lab says output: json
    assert json.loads(capsys.readouterr().out)["context"] == "lab"
    assert main(["--context", "prod", "config", "show"]) == 0
    assert capsys.readouterr().out.startswith("file ")
    assert main(["config", "use-context", "nope"]) == 2


def test_a_context_named_where_there_is_no_configuration_file_is_refused(
    configured: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A typo or a missing file must not send the command to the local stack.
    configured.unlink()
    monkeypatch.setenv("KILN_CONTEXT", "prod")
    with pytest.raises(InvalidArgument, match="no context 'prod'"):
        discovery.address("builder")


def test_a_ca_file_that_is_not_there_is_bad_input(
    configured: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_CA_FILE", str(configured.parent / "missing.pem"))
    with pytest.raises(InvalidArgument, match=r"missing\.pem: No such file"):
        credentials.channel_credentials()
    monkeypatch.delenv("KILN_CA_FILE")  # the context's ~/prod-ca.pem, not there either
    with pytest.raises(InvalidArgument, match=r"prod-ca\.pem: No such file"):
        credentials.channel_credentials()
