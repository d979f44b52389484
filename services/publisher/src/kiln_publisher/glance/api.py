"""Glance's v2 API for one cloud and region, through openstacksdk's session.

Blocking calls (run them in a thread). The image API is called by path
through the SDK's adapter rather than its image proxy's helpers, whose traps
(INFRA.md) cost more than the REST calls themselves: create_image(use_import)
does not wait, import_image hides HTTP errors, update_image 409s on custom
properties. Every failure becomes a kiln_common error a user can act on."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import openstack
import openstack.config
import requests
from keystoneauth1 import exceptions as ksa
from openstack import exceptions as sdk

from kiln_common.errors import (
    FailedPrecondition,
    InvalidArgument,
    KilnError,
    NotFound,
    PermissionDenied,
    Unavailable,
)

PATCH = "application/openstack-images-v2.1-json-patch"
OCTETS = "application/octet-stream"
DOWNLOAD_CHUNK = 1 << 20


def config(clouds_yaml: Path | None) -> openstack.config.OpenStackConfig:
    """The clouds.yaml given, else the one openstacksdk finds (OS_CLIENT_CONFIG_FILE,
    ./clouds.yaml, ~/.config/openstack, /etc/openstack)."""
    if clouds_yaml is None:
        return openstack.config.OpenStackConfig()
    if not clouds_yaml.is_file():
        raise FailedPrecondition(f"clouds.yaml {clouds_yaml} does not exist")
    return openstack.config.OpenStackConfig(config_files=[str(clouds_yaml)])


def where(cloud: str, region: str | None) -> str:
    return f"cloud {cloud!r}" + (f" region {region!r}" if region else "")


def translate(exc: BaseException, what: str) -> KilnError:
    """An SDK or transport failure as the domain error it means."""
    if isinstance(exc, KilnError):
        return exc
    if isinstance(exc, ksa.EndpointNotFound):
        return FailedPrecondition(f"{what}: the cloud's catalogue has no image service there")
    if isinstance(exc, ksa.Unauthorized):
        return PermissionDenied(f"{what}: Keystone refused the credentials in clouds.yaml")
    if isinstance(exc, ksa.http.HttpError) and exc.http_status is not None:
        return _by_status(exc.http_status, f"{what}: {exc}")
    if isinstance(exc, (ksa.ConnectionError, ksa.DiscoveryFailure, requests.ConnectionError)):
        return Unavailable(f"{what}: cannot reach the cloud ({type(exc).__name__}: {exc})")
    if isinstance(exc, sdk.NotSupported):  # version discovery found nothing: no answer there
        return Unavailable(f"{what}: cannot reach the cloud's image service ({exc})")
    if isinstance(exc, sdk.ConfigException):
        return InvalidArgument(f"{what}: {exc}")
    if isinstance(exc, sdk.HttpException) and exc.status_code is not None:
        return _by_status(int(exc.status_code), f"{what}: {exc}")
    return Unavailable(f"{what}: {type(exc).__name__}: {exc}")


def _by_status(status: int, message: str) -> KilnError:
    if status in (401, 403):
        return PermissionDenied(message)
    if status == 404:
        return NotFound(message)
    if status in (400, 413, 415):
        return InvalidArgument(message)
    if status == 409:
        return FailedPrecondition(message)
    return Unavailable(message)  # 5xx and the rest: the cloud may recover


class GlanceApi:
    """One authenticated session with one Glance. Thread-safe enough for the
    publisher's use: keystoneauth sessions are shared across threads."""

    def __init__(self, cfg: openstack.config.OpenStackConfig, cloud: str, region: str | None):
        self.where = where(cloud, region)
        try:
            region_cfg = cfg.get_one(cloud=cloud, region_name=region or None)
        except sdk.ConfigException as exc:
            raise InvalidArgument(f"{self.where}: not in clouds.yaml ({exc})") from exc
        self.conn = openstack.connection.Connection(config=region_cfg)
        self.auth_type = str(region_cfg.config.get("auth_type") or "")

    def _call(self, method: str, path: str, ok: Iterable[int], **kw: Any) -> requests.Response:
        what = f"{method} {path} on {self.where}"
        try:
            reply = self.conn.image.request(path, method, raise_exc=False, **kw)
        except Exception as exc:
            raise translate(exc, what) from exc
        if reply.status_code not in tuple(ok):
            text = reply.text[:300].strip().replace("\n", " ")
            raise _by_status(reply.status_code, f"{what}: HTTP {reply.status_code}: {text}")
        return reply

    def project_id(self) -> str:
        """The project the session acts in; "" for a Glance without Keystone
        (clouds.yaml `auth_type: none`), which has no project to name. Any
        other session without one (domain- or system-scoped credentials) is
        refused: Kiln would see, rotate and retire other projects' images."""
        try:
            project = self.conn.current_project_id
        except Exception as exc:
            raise translate(exc, f"authenticating to {self.where}") from exc
        if project:
            return str(project)
        if self.auth_type == "none":
            return ""
        raise FailedPrecondition(
            f"{self.where}: its credentials name no project: give clouds.yaml a project"
            " (project_name or project_id) for this cloud"
        )

    def import_methods(self) -> tuple[str, ...]:
        info = self._call("GET", "/info/import", (200,)).json()
        return tuple(info.get("import-methods", {}).get("value", ()))

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self._call("POST", "/images", (201,), json=dict(body)).json())

    def get(self, image_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/images/{image_id}", (200,)).json())

    def list(self, **query: str) -> list[dict[str, Any]]:
        """Every image matching query (each page followed)."""
        found: list[dict[str, Any]] = []
        params: dict[str, str] | None = {"limit": "200", **query}
        path = "/images"
        while True:
            page = self._call("GET", path, (200,), params=params).json()
            found.extend(page["images"])
            if "next" not in page:
                return found
            path, params = page["next"].removeprefix("/v2"), None

    def stage(self, image_id: str, body: Iterator[bytes]) -> None:
        headers = {"Content-Type": OCTETS}
        self._call("PUT", f"/images/{image_id}/stage", (204,), data=body, headers=headers)

    def upload(self, image_id: str, body: Iterator[bytes]) -> None:
        headers = {"Content-Type": OCTETS}
        self._call("PUT", f"/images/{image_id}/file", (204,), data=body, headers=headers)

    def start_import(self, image_id: str, method: str, uri: str | None = None) -> None:
        body: dict[str, Any] = {"method": {"name": method, **({"uri": uri} if uri else {})}}
        self._call("POST", f"/images/{image_id}/import", (202,), json=body)

    def set_properties(self, image_id: str, values: Mapping[str, Any]) -> None:
        ops = [{"op": "replace", "path": f"/{k}", "value": v} for k, v in values.items()]
        headers = {"Content-Type": PATCH}
        self._call("PATCH", f"/images/{image_id}", (200,), data=json.dumps(ops), headers=headers)

    def deactivate(self, image_id: str) -> None:
        self._call("POST", f"/images/{image_id}/actions/deactivate", (204,))

    def reactivate(self, image_id: str) -> None:
        self._call("POST", f"/images/{image_id}/actions/reactivate", (204,))

    def delete(self, image_id: str) -> None:
        """Deletes the image; one already gone is fine."""
        self._call("DELETE", f"/images/{image_id}", (204, 404))

    def download(self, image_id: str) -> tuple[Iterator[bytes], Any]:
        """The image's bytes as they arrive, and a close() for the response."""
        reply = self._call("GET", f"/images/{image_id}/file", (200,), stream=True)
        return reply.iter_content(DOWNLOAD_CHUNK), reply.close
