"""Kiln's client library: one client per service, async and blocking, with
one retry policy, pages as iterators, failures as kiln_common.errors, and
service addresses found in settings, KILN_* variables or the local stack."""

from kiln_client.builder import AsyncBuilderClient, BuilderClient
from kiln_client.discovery import NotRunning, Stack, kiln_home
from kiln_client.errors import ClientError, UploadStopped
from kiln_client.publisher import AsyncPublisherClient, PublisherClient
from kiln_client.storage import AsyncStorageClient, StorageClient

__all__ = [
    "AsyncBuilderClient",
    "AsyncPublisherClient",
    "AsyncStorageClient",
    "BuilderClient",
    "ClientError",
    "NotRunning",
    "PublisherClient",
    "Stack",
    "StorageClient",
    "UploadStopped",
    "kiln_home",
]
