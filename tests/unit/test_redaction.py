"""Credentials of URLs (a password, a signed URL's signature, a token) never
reach a log line, a build log, a record's error or a settings error."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from kiln_common.logs import RedactingFormatter, redact
from kiln_common.settings import settings_error
from kiln_storage.settings import StorageSettings

SECRET = "Zm9vYmFyYmF6cXV4"


@pytest.mark.parametrize(
    "text",
    [
        f"could not download http://127.0.0.1:9/a/b.qcow2?expires=1&signature={SECRET}: refused",
        f"https://s3.local/bucket/key?X-Amz-Credential={SECRET}%2F20261206&X-Amz-Signature={SECRET}",
        f"nats://kiln:{SECRET}@127.0.0.1:4222",
        f"GET http://h/x?token={SECRET} answered 500",
        f"web-download of 'http://h/y?sig={SECRET}' failed",
        f"nats://{SECRET}@127.0.0.1:4222",
        f"authorization: Bearer {SECRET}",
        f"with kiln_01m96gvs5j3za4sfa3fga3ja9z_{SECRET}-x and more",
    ],
)
def test_a_urls_credentials_are_masked_and_the_rest_kept(text: str) -> None:
    masked = redact(text)
    assert SECRET not in masked and "***" in masked
    assert masked.split("?")[0].split("://")[-1].split("@")[-1].split()[0] in text  # the rest stays


def test_a_log_line_is_redacted_by_the_formatter() -> None:
    record = logging.LogRecord(
        "x", logging.INFO, "f", 1, "from %s", (f"http://h/?signature={SECRET}",), None
    )
    assert SECRET not in RedactingFormatter("%(message)s").format(record)


def test_a_bad_setting_is_named_without_its_value() -> None:
    with pytest.raises(ValidationError) as caught:
        StorageSettings(url_signing_key=SECRET, part_size=SECRET)  # type: ignore[arg-type]
    text = settings_error(caught.value)
    assert SECRET not in text
    assert "url_signing_key: " in text and "part_size: " in text


def test_the_logged_settings_mask_a_urls_password() -> None:
    public = StorageSettings(nats_url=f"nats://kiln:{SECRET}@127.0.0.1:4222").public()
    assert public["nats_url"] == "nats://***@127.0.0.1:4222"
