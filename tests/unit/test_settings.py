from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kiln_storage.settings import StorageSettings


def test_settings_come_from_env_and_a_yaml_file_env_winning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "storage.yaml"
    config.write_text("backend: s3\ns3_bucket: from-file\npart_size: 8388608\n")
    monkeypatch.setenv("KILN_STORAGE_CONFIG_FILE", str(config))
    monkeypatch.setenv("KILN_STORAGE_S3_BUCKET", "from-env")
    settings = StorageSettings()
    assert settings.backend == "s3"
    assert settings.s3_bucket == "from-env"
    assert settings.part_size == 8 * 1024 * 1024


def test_unknown_or_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_STORAGE_BACKEND", "floppy")
    with pytest.raises(ValidationError, match="backend"):
        StorageSettings()


def test_secrets_are_masked_when_logged() -> None:
    shown = StorageSettings(s3_secret_key="hunter2", s3_access_key="AK").public()
    assert "hunter2" not in str(shown)
