"""GlancePublisher: one artifact to one cloud/region, verified, idempotent, rotated."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kiln_common.errors import (
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    KilnError,
)
from kiln_common.retry import RetryPolicy
from kiln_publisher.glance import api
from kiln_publisher.glance.api import GlanceApi
from kiln_publisher.glance.bridge import Opened, ToThread, from_thread
from kiln_publisher.glance.model import RETIRE_HOW, GlanceImage, GlanceTarget, ImageSource
from kiln_publisher.glance.rotation import HALF_MADE, KILN_MARK, to_retire

log = logging.getLogger(__name__)

VISIBILITIES = ("private", "shared", "community", "public")
# Bounded: a Glance that is down fails the publication in seconds, not minutes.
# No overall deadline: one try of a large upload may itself take minutes.
DEFAULT_RETRY = RetryPolicy(attempts=4, initial=0.5, maximum=5.0, deadline=None)
CLEANUP_WAIT = 30.0  # seconds an abandoned upload thread gets to notice and stop
# A half-made image of the artifact that Glance is still filling (importing
# from storage's URL after the publisher that asked died) is waited for when
# it changed this recently; an older one, or one nobody fills, is deleted.
STALE_AFTER = 600.0


class ImportFailed(FailedPrecondition):
    """Glance accepted an import but its task failed (for web-download: most
    often because Glance cannot reach the URL)."""


class GlancePublisher:
    def __init__(
        self,
        clouds_yaml: Path | None,
        retry: RetryPolicy | None = None,
        *,
        active_timeout: float = 3600.0,
        poll: float = 0.25,
    ) -> None:
        self._config = api.config(clouds_yaml)
        self.retry = retry or DEFAULT_RETRY
        self.active_timeout = active_timeout  # seconds from data sent to the image active
        self.poll = poll
        self._apis: dict[tuple[str, str | None], GlanceApi] = {}
        self._lock = threading.Lock()

    def clouds(self) -> list[str]:
        return sorted(self._config.get_cloud_names())

    def _api(self, cloud: str, region: str | None) -> GlanceApi:
        with self._lock:
            key = (cloud, region)
            if key not in self._apis:
                if cloud not in self.clouds():
                    known = ", ".join(self.clouds()) or "none"
                    raise InvalidArgument(f"no cloud {cloud!r} in clouds.yaml (known: {known})")
                self._apis[key] = GlanceApi(self._config, cloud, region)
            return self._apis[key]

    # ---- publish ------------------------------------------------------------------------

    async def publish(self, source: ImageSource, target: GlanceTarget) -> GlanceImage:
        """The artifact as an active image in target's cloud/region, its SHA-512
        checked; the same image when it is there already. Retries what may pass
        (Glance or Keystone unreachable, 5xx); whatever a failed try created is
        deleted before the next try or the error."""
        _validate(target)
        name = target.name or source.name
        glance = self._api(target.cloud, target.region)
        what = f"publishing artifact {source.artifact_id} to {glance.where}"
        return await self.retry.acall(
            lambda: self._publish_once(glance, source, target, name), what
        )

    async def _publish_once(
        self, glance: GlanceApi, source: ImageSource, target: GlanceTarget, name: str
    ) -> GlanceImage:
        project = await asyncio.to_thread(glance.project_id)
        named = await asyncio.to_thread(_named, glance, project, name)
        # Revealing: a copy rotation deactivated is the image to show again.
        shown = ("active", "deactivated") if target.reveal else ("active",)
        found = [str(i["id"]) for i in named if _is_copy_of(i, source, shown)]
        adopted = await self._settle_leftovers(glance, source, named, adopt=not found)
        existing = found[0] if found else adopted
        if existing is not None:
            image_id, method = existing, "existing"
            log.info(
                "%s: artifact %s is image %s already", glance.where, source.artifact_id, image_id
            )
            if target.reveal:
                await asyncio.to_thread(_reveal, glance, image_id)
            named = await asyncio.to_thread(_named, glance, project, name)
        else:
            image_id, method = await self._upload(glance, source, target, name)
            named = await asyncio.to_thread(_named, glance, project, name)
        retired = []
        for image in to_retire(named, image_id, target.keep, target.retire):
            await asyncio.to_thread(_retire, glance, image, target.retire)
            retired.append(str(image["id"]))
        return GlanceImage(target.cloud, target.region, image_id, name, method, tuple(retired))

    async def _settle_leftovers(
        self, glance: GlanceApi, source: ImageSource, named: list[dict[str, Any]], adopt: bool
    ) -> str | None:
        """The artifact's half-made images, which a publisher that died mid-way
        left (its own cleanup never ran). One that Glance is still filling, and
        recently, is waited for and, active and verified, adopted (its id
        returned) rather than uploaded a second time; every other one (queued,
        uploading, killed, stale, failed) is deleted so none lingers."""
        adopted: str | None = None
        for image in named:
            if image.get(KILN_MARK) != source.artifact_id or image["status"] not in HALF_MADE:
                continue
            image_id, age = str(image["id"]), _age(image)
            if adopt and adopted is None and _in_flight(image) and age < STALE_AFTER:
                log.info("%s: waiting for image %s (%s)", glance.where, image_id, image["status"])
                try:
                    done = await self._wait_active(glance, image_id, True, STALE_AFTER - age)
                    _verify(done, source, glance.where)
                    adopted = image_id
                    continue
                except KilnError as exc:
                    log.info("%s: image %s not adopted: %s", glance.where, image_id, exc)
            await self._discard(glance, image_id, f"left {image['status']} by an earlier try")
        return adopted

    async def _upload(
        self, glance: GlanceApi, source: ImageSource, target: GlanceTarget, name: str
    ) -> tuple[str, str]:
        methods = await asyncio.to_thread(glance.import_methods)
        order: list[str] = [m for m in ("web-download", "glance-direct") if m in methods]
        if "web-download" in order and not source.url:
            order.remove("web-download")
        for method in order or ["upload"]:
            try:
                return await self._attempt(glance, source, target, name, method), method
            except ImportFailed as exc:
                if method != "web-download":
                    raise
                log.info(
                    "%s: web-download failed (%s); staging the bytes instead", glance.where, exc
                )
        raise FailedPrecondition(f"{glance.where}: web-download failed and glance-direct is off")

    async def _attempt(
        self, glance: GlanceApi, source: ImageSource, target: GlanceTarget, name: str, method: str
    ) -> str:
        """One image created and filled by method; deleted on any failure,
        cancellation included, so a failed try leaves nothing half-made."""
        image_id = await self._create(glance, _create_body(source, target, name))
        log.info("%s: image %s created for %s (%s)", glance.where, image_id, name, method)
        try:
            if method == "web-download":
                await _start_web_download(glance, image_id, source.url)
            else:
                send = glance.upload if method == "upload" else glance.stage
                await _send(source, lambda chunks: send(image_id, chunks))
                if method == "glance-direct":
                    await asyncio.to_thread(glance.start_import, image_id, method)
            image = await self._wait_active(
                glance, image_id, method != "upload", self.active_timeout
            )
            _verify(image, source, glance.where)
        except BaseException:
            await self._discard(glance, image_id)
            raise
        return image_id

    async def _create(self, glance: GlanceApi, body: dict[str, Any]) -> str:
        """Creates the image record. A cancel while Glance creates it still
        learns its id, and deletes it: a queued image is not left behind."""
        creating = asyncio.ensure_future(asyncio.to_thread(glance.create, body))
        try:
            return str((await asyncio.shield(creating))["id"])
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self._discard(glance, str((await creating)["id"]))
            raise

    async def _discard(
        self, glance: GlanceApi, image_id: str, why: str = "its publication failed"
    ) -> None:
        """Deletes an image a failed try made, retried (Glance may still be
        finishing the broken upload: SQLite's "database is locked" is a 500);
        shielded, so a cancel cannot stop it half-way. A Glance that stays
        down cannot delete: logged, with the image's id, for the operator."""

        async def delete() -> None:
            await asyncio.to_thread(glance.delete, image_id)

        try:
            await asyncio.shield(self.retry.acall(delete, f"deleting image {image_id}"))
            log.info("%s: image %s deleted (%s)", glance.where, image_id, why)
        except BaseException as exc:  # noqa: BLE001 - the original error matters more
            log.warning("%s: could not delete image %s: %s", glance.where, image_id, exc)

    async def _wait_active(
        self, glance: GlanceApi, image_id: str, imported: bool, within: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            image = await asyncio.to_thread(glance.get, image_id)
            if image["status"] == "active":
                return image
            if image["status"] in ("killed", "deleted", "deactivated"):
                raise FailedPrecondition(
                    f"{glance.where}: image {image_id} became {image['status']}"
                )
            failed = image.get("os_glance_failed_import")
            if imported and failed and not image.get("os_glance_importing_to_stores"):
                reason = await asyncio.to_thread(_task_message, glance, image_id)
                raise ImportFailed(f"{glance.where}: Glance's import failed: {reason}")
            if time.monotonic() > deadline:
                raise DeadlineExceeded(
                    f"{glance.where}: image {image_id} still {image['status']} after {within:g}s"
                )
            await asyncio.sleep(self.poll)

    # ---- retire, open -------------------------------------------------------------------

    async def retire(self, cloud: str, region: str | None, image_id: str, how: str) -> None:
        """Hides, deactivates or deletes one image (the marketplace's expiry)."""
        _check_retire(how)
        glance = self._api(cloud, region)

        async def once() -> None:
            image = await asyncio.to_thread(glance.get, image_id)
            await asyncio.to_thread(_retire, glance, image, how)

        await self.retry.acall(once, f"retiring image {image_id} on {glance.where}")

    async def open_image(
        self, cloud: str, region: str | None, image_id: str
    ) -> tuple[int, str, AsyncIterator[bytes]]:
        """An active image's size, Glance's SHA-512 of it, and its bytes as they
        arrive (the caller checks them against the hash: Glance computed it).
        The download itself starts at the first read: a caller that drops the
        stream unread leaves no open response behind."""
        glance = self._api(cloud, region)

        async def check() -> dict[str, Any]:
            image = await asyncio.to_thread(glance.get, image_id)
            if image["status"] != "active":
                raise FailedPrecondition(f"{glance.where}: image {image_id} is {image['status']}")
            if image.get("os_hash_algo") != "sha512" or not image.get("os_hash_value"):
                raise FailedPrecondition(f"{glance.where}: image {image_id} has no SHA-512")
            return image

        async def download() -> Opened:
            # Shielded like _create: a cancel while Glance answers still closes the response.
            opening = asyncio.ensure_future(asyncio.to_thread(glance.download, image_id))
            try:
                return await asyncio.shield(opening)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    (await opening)[1]()
                raise

        image = await self.retry.acall(check, f"opening image {image_id}")
        chunks = from_thread(lambda: self.retry.acall(download, f"downloading image {image_id}"))
        return int(image["size"]), str(image["os_hash_value"]), chunks


# ---- helpers (blocking ones run in threads) ----------------------------------------------


def _check_retire(how: str) -> None:
    if how not in RETIRE_HOW:
        raise InvalidArgument(f"retire must be one of {', '.join(RETIRE_HOW)}, not {how!r}")


def _validate(target: GlanceTarget) -> None:
    _check_retire(target.retire)
    if target.visibility not in VISIBILITIES:
        raise InvalidArgument(
            f"visibility must be one of {', '.join(VISIBILITIES)}, not {target.visibility!r}"
        )
    if target.keep < 0 or target.min_disk < 0 or target.min_ram < 0:
        raise InvalidArgument("keep, min_disk and min_ram cannot be negative")


def _create_body(source: ImageSource, target: GlanceTarget, name: str) -> dict[str, Any]:
    properties = {**source.properties, **target.properties, KILN_MARK: source.artifact_id}
    return {
        **{k: str(v) for k, v in properties.items()},
        "name": name,
        "disk_format": source.disk_format,
        "container_format": "bare",
        "visibility": target.visibility,
        "tags": list(target.tags),
        "min_disk": target.min_disk,
        "min_ram": target.min_ram,
    }


def _named(glance: GlanceApi, project: str, name: str) -> list[dict[str, Any]]:
    """This project's images of the name, hidden ones included (a listing
    leaves them out unless asked). Without a project (a Glance without
    Keystone) every image of the name that the session sees: asking for an
    owner "None" found none, and each publish made another copy."""
    query = {"name": name, "owner": project} if project else {"name": name}
    return glance.list(**query) + glance.list(**query, os_hidden="true")


def _is_copy_of(
    image: dict[str, Any], source: ImageSource, statuses: tuple[str, ...] = ("active",)
) -> bool:
    return image.get(KILN_MARK) == source.artifact_id and image["status"] in statuses


def _in_flight(image: Mapping[str, Any]) -> bool:
    """Glance fills it without its publisher: importing or saving, or an
    import Glance accepted but has not started (the image still queued, or
    uploading once staged, with its task noted)."""
    if image["status"] in ("saving", "importing"):
        return True
    return image["status"] in ("queued", "uploading") and bool(image.get("os_glance_import_task"))


def _age(image: Mapping[str, Any]) -> float:
    """Seconds since Glance last changed the image (its clock and ours agree
    well enough for a bound of minutes); unknown reads as stale."""
    try:
        changed = datetime.fromisoformat(str(image["updated_at"]))
    except (KeyError, ValueError):
        return float("inf")
    if changed.tzinfo is None:
        changed = changed.replace(tzinfo=UTC)
    return (datetime.now(UTC) - changed).total_seconds()


def _verify(image: dict[str, Any], source: ImageSource, where: str) -> None:
    algo, value = image.get("os_hash_algo"), image.get("os_hash_value")
    if algo != "sha512" or value != source.sha512.lower():
        raise DataLoss(
            f"{where}: Glance's {algo} of image {image['id']} is {value}, but the "
            f"artifact's SHA-512 is {source.sha512}: the image is deleted"
        )
    if image.get("size") != source.size:
        raise DataLoss(
            f"{where}: image {image['id']} has {image.get('size')} bytes, the artifact "
            f"{source.size}: the image is deleted"
        )


def _retire(glance: GlanceApi, image: Mapping[str, Any], how: str) -> None:
    image_id = str(image["id"])
    if how == "hide":
        glance.set_properties(image_id, {"os_hidden": True})
    elif how == "deactivate":
        if image["status"] != "deactivated":
            glance.deactivate(image_id)
    else:
        glance.delete(image_id)
    log.info("%s: image %s retired (%s)", glance.where, image_id, how)


def _reveal(glance: GlanceApi, image_id: str) -> None:
    """Shows the image again if rotation (or an expiry) hid or deactivated it
    (a revoked build is never published, so never revealed)."""
    image = glance.get(image_id)
    if image.get("status") == "deactivated":
        glance.reactivate(image_id)
        log.info("%s: image %s reactivated", glance.where, image_id)
    if image.get("os_hidden"):
        glance.set_properties(image_id, {"os_hidden": False})
        log.info("%s: image %s shown again", glance.where, image_id)


async def _start_web_download(glance: GlanceApi, image_id: str, url: str) -> None:
    """Asks Glance to fetch url. A refusal of the URL itself (the cloud's
    import filtering) is a failed web-download, which glance-direct replaces."""
    try:
        await asyncio.to_thread(glance.start_import, image_id, "web-download", url)
    except InvalidArgument as exc:
        raise ImportFailed(str(exc)) from exc


def _task_message(glance: GlanceApi, image_id: str) -> str:
    """The failed import task's own words, for the error (best effort)."""
    try:
        reply = glance._call("GET", f"/images/{image_id}/tasks", (200,)).json()
    except KilnError:
        return "no task message"
    messages = [t.get("message") for t in reply.get("tasks", []) if t.get("status") == "failure"]
    return "; ".join(m for m in messages if m) or "no task message"


async def _send(source: ImageSource, send: Callable[[Iterator[bytes]], None]) -> None:
    """Runs send in a thread over the source's bytes as they come from
    storage. Cancelled or failed, the thread's body stops at its next chunk
    and is waited for (briefly), so no upload outlives its publication; the
    storage stream is closed on every path."""
    body = ToThread(source.stream(), asyncio.get_running_loop())
    sending = asyncio.ensure_future(asyncio.to_thread(send, iter(body)))
    try:
        await asyncio.shield(sending)
    except BaseException:
        body.abort()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(sending), CLEANUP_WAIT)
        raise
    finally:
        await body.aclose()  # on every path, even with the thread still stuck in send
