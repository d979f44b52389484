"""The documentation names every setting the service reads."""

from __future__ import annotations

from support import REPO

from kiln_storage.settings import StorageSettings


def test_every_storage_setting_is_documented() -> None:
    text = (REPO / "docs/storage.md").read_text()
    missing = [n for n in StorageSettings.model_fields if f"`{n.upper()}`" not in text]
    assert not missing, f"docs/storage.md does not document: {missing}"


def test_every_builder_setting_is_documented() -> None:
    from kiln_builder.service.settings import BuilderSettings

    text = (REPO / "docs/builder-service.md").read_text()
    missing = [n for n in BuilderSettings.model_fields if f"`{n.upper()}`" not in text]
    assert not missing, f"docs/builder-service.md does not document: {missing}"


def test_every_publisher_setting_is_documented() -> None:
    from kiln_publisher.settings import PublisherSettings

    text = (REPO / "docs/publisher.md").read_text()
    missing = [n for n in PublisherSettings.model_fields if f"`{n.upper()}`" not in text]
    assert not missing, f"docs/publisher.md does not document: {missing}"
