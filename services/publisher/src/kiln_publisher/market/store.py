"""The marketplace store: one NATS JetStream key per image and endorser,
holding the newest signed document. Every replica reads and writes the same
bucket, each write is a compare-and-set on the key's revision (two replicas
deprecating at once: one wins, one retries on the winner's entry), and what
is read back is verified again, so a document altered inside NATS is never
served as trusted. A second bucket keeps, per entry key, the highest sequence
ever written (and whether that statement deprecated the image): a document
rolled back inside NATS to an older, validly signed statement is refused by
every replica, a freshly started one included."""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from kiln_common import jetstream
from kiln_common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from kiln_common.events import Publisher
from kiln_market.entry import (
    DEFAULT_VALIDITY,
    Endorser,
    Entry,
    ImageFacts,
    check_identifier,
    new_entry,
)
from kiln_market.keys import Keyring
from kiln_market.signing import Rejected, SignedEntry, sign, verify
from kiln_publisher.market.history import HISTORY, Step, keep_history, steps
from kiln_publisher.market.marks import Head, Mark
from kiln_publisher.market.owners import OWNERS_SUFFIX, Owners
from kiln_publisher.market.query import Query

log = logging.getLogger(__name__)

BUCKET = "KILN_MARKET"
NEWEST_SUFFIX = "_NEWEST"  # the high-water bucket is BUCKET + this
_CAS_ATTEMPTS = 5


def _key(identifier: str, email: str) -> str:
    # NATS keys allow [-/_=.A-Za-z0-9]: the email goes in as base64url.
    tag = base64.urlsafe_b64encode(email.lower().encode()).decode().rstrip("=")
    return f"{identifier}.{tag}"


def _no_entry(identifier: str, endorser: str | None) -> NotFound:
    by = f" endorsed by {endorser}" if endorser else ""
    return NotFound(f"no marketplace entry {identifier}{by}")


def _sequence_in(document: bytes | None) -> int:
    """The sequence an untrusted document claims (0 if it claims none)."""
    try:
        sequence = json.loads(document or b"{}")["entry"]["sequence"]
    except (ValueError, KeyError, TypeError):
        return 0
    return sequence if isinstance(sequence, int) else 0


async def _put(kv: KeyValue, key: str, value: bytes, revision: int | None) -> None:
    """A compare-and-set: create the key (revision None) or update that
    revision; FailedPrecondition if someone else wrote first."""
    if revision is None:
        await jetstream.mapped(lambda: kv.create(key, value))
    else:
        await jetstream.mapped(lambda: kv.update(key, value, last=revision))


def _covers(current: Entry, fresh: Entry, now: datetime) -> bool:
    """Whether current already says what fresh would, and is valid now.
    Locations do not count: the publisher signs a new short-lived storage URL
    each time, and readers get a fresh one through the download link anyway."""

    def facts(entry: Entry) -> Entry:
        return replace(entry, sequence=0, created="", valid_until="", expired=False, locations=())

    return current.status(now) == "valid" and facts(current) == facts(fresh)


def event_data(entry: Entry, now: datetime) -> dict[str, Any]:
    return {
        "identifier": entry.identifier,
        "sequence": entry.sequence,
        "endorser": entry.endorser.email,
        "kid": entry.endorser.kid,
        "status": entry.status(now),
        "artifact_id": entry.artifact_id,
        "title": entry.title,
        "os": entry.os,
        "os_version": entry.os_version,
        "arch": entry.arch,
        "sha256": entry.checksums.sha256,
        "valid_until": entry.valid_until,
    }


class Market:
    def __init__(
        self,
        js: JetStreamContext,
        keys: Keyring,
        events: Publisher,
        bucket: str = BUCKET,
        replicas: int = 1,
    ) -> None:
        self._js = js
        self.keys = keys
        self._events = events
        self._bucket = bucket
        self._replicas = replicas
        self._kv: KeyValue | None = None
        self._marks: KeyValue | None = None
        # The newest entry this replica has verified per key: a second
        # guard beside the durable high-water marks.
        self._seen: dict[str, Entry] = {}
        # Each key's entry as verified at a revision with a keyring: a KV
        # revision's bytes never change, so a search does not check every
        # signature again each time; a reloaded keyring checks them afresh.
        self._verified: dict[str, tuple[int, Keyring, Entry]] = {}
        # Each key's history as read for its newest statement's sequence
        # with a keyring (see history()).
        self._histories: dict[str, tuple[int, Keyring, list[Step]]] = {}
        self.signatures_checked = 0  # how many documents were verified (the cache's measure)
        self.owners = Owners(lambda: self._bucket_named(self._bucket + OWNERS_SUFFIX))

    async def _bucket_named(self, name: str, history: int = 1) -> KeyValue:
        return await jetstream.mapped(
            lambda: jetstream.key_value(self._js, name, history=history, replicas=self._replicas)
        )

    async def _store(self) -> KeyValue:
        if self._kv is None:
            # The entries' bucket keeps their older statements too: an entry's history.
            kv = await self._bucket_named(self._bucket, HISTORY)
            await keep_history(self._js, self._bucket)
            self._kv = kv
        return self._kv

    async def _newest(self) -> KeyValue:
        if self._marks is None:
            self._marks = await self._bucket_named(self._bucket + NEWEST_SUFFIX)
        return self._marks

    async def _mark(self, key: str) -> tuple[Mark, int | None]:
        """The key's high-water mark and its revision (None: never written)."""
        marks = await self._newest()
        try:
            found = await jetstream.mapped(lambda: marks.get(key))
        except NotFound:
            return Mark(0, False), None
        return Mark.decode(found.value), found.revision

    async def _raise_mark(self, key: str, entry: Entry) -> None:
        """Records entry as the key's newest statement unless a newer one is
        recorded; a compare-and-set, so racing replicas keep the highest."""
        marks = await self._newest()
        mark = Mark(entry.sequence, entry.deprecated)
        for _ in range(_CAS_ATTEMPTS):
            known, revision = await self._mark(key)
            if known.sequence >= entry.sequence:
                return
            try:
                await _put(marks, key, mark.encode(), revision)
                return
            except FailedPrecondition:
                continue  # another replica moved it: look again
        raise FailedPrecondition(f"entry {entry.identifier} keeps changing; try again")

    async def _read(self, key: str) -> tuple[SignedEntry, int] | None:
        kv = await self._store()
        try:
            found = await jetstream.mapped(lambda: kv.get(key))
        except NotFound:
            return None
        if found.value is None or found.revision is None:
            return None
        cached = self._verified.get(key)
        if cached is not None and cached[0] == found.revision and cached[1] is self.keys:
            entry = cached[2]
        else:
            entry = verify(found.value, self.keys, newest=self._seen.get(key))
            self.signatures_checked += 1
            self._verified[key] = (found.revision, self.keys, entry)
        mark, _ = await self._mark(key)
        if entry.sequence < mark.sequence:
            raise Rejected(
                "stale",
                f"entry {entry.identifier} #{entry.sequence} by {entry.endorser.email} is "
                f"older than the newest written (#{mark.sequence}): a rolled-back statement",
            )
        if entry.sequence > mark.sequence:
            # Written by a replica that stopped before recording it.
            await self._raise_mark(key, entry)
        self._saw(key, entry)
        return SignedEntry(entry, found.value), found.revision

    def _saw(self, key: str, entry: Entry) -> None:
        known = self._seen.get(key)
        if known is None or entry.sequence > known.sequence:
            self._seen[key] = entry

    async def _write(self, key: str, signed: SignedEntry, revision: int | None) -> None:
        await _put(await self._store(), key, signed.document, revision)

    async def publish(
        self,
        facts: ImageFacts,
        endorser: str,
        valid_for: timedelta | None = None,
        now: datetime | None = None,
        tenant: str = "",
    ) -> SignedEntry:
        """Signs and stores the endorser's entry for the image. An image the
        endorser already vouches for, with the same facts and still valid,
        keeps its entry as it is; an expired one, or one whose facts
        changed, gets a new statement superseding it. A deprecated image is
        not endorsed again (FailedPrecondition): deprecation is final."""
        signer = self.keys.signer(endorser)
        moment = now or datetime.now(UTC)
        validity = valid_for if valid_for is not None else DEFAULT_VALIDITY
        fresh = new_entry(facts, Endorser(signer.email, signer.kid), moment, validity)
        key = _key(fresh.identifier, signer.email)
        if not await self.owners.claim(key, tenant):
            # Entries are public, so saying it exists leaks nothing; whose it is stays unsaid.
            raise PermissionDenied(
                f"entry {fresh.identifier} by {signer.email} is another tenant's: this"
                " tenant may not endorse that image again"
            )
        for _ in range(_CAS_ATTEMPTS):
            head = await self._head(key)
            if head is not None and head.deprecated:
                raise FailedPrecondition(
                    f"entry {fresh.identifier} by {signer.email} is deprecated, and a "
                    "deprecated image stays so: build and publish a new image instead"
                )
            if head and head.current and _covers(head.current.entry, fresh, moment):
                return head.current  # re-running a publish changes nothing
            entry = replace(fresh, sequence=head.sequence + 1) if head else fresh
            signed = sign(entry, signer)
            if await self._try_write(key, signed, head.revision if head else None):
                await self._wrote(key, entry)
                await self._events.publish(
                    "entry.published", entry.identifier, event_data(entry, moment)
                )
                return signed
        raise FailedPrecondition(f"entry {fresh.identifier} keeps changing; try again")

    async def _wrote(self, key: str, entry: Entry) -> None:
        self._saw(key, entry)
        await self._raise_mark(key, entry)

    async def _head(self, key: str) -> Head | None:
        """What is stored under key, or None. An entry no longer trusted
        (its key revoked since, or rolled back) still counts, so the new
        statement supersedes it and every one written before."""
        try:
            current = await self._read(key)
        except Rejected as exc:
            log.warning("superseding the untrusted entry %s: %s", key, exc)
            kv = await self._store()
            found = await jetstream.mapped(lambda: kv.get(key))
            if found.revision is None:
                return None
            seen = self._seen.get(key)
            mark, _ = await self._mark(key)
            sequence = max(_sequence_in(found.value), seen.sequence if seen else 0, mark.sequence)
            deprecated = mark.deprecated or bool(seen and seen.deprecated)
            return Head(sequence, found.revision, None, deprecated)
        if current is None:
            # Gone from NATS (purged): a new statement still outranks the
            # newest ever written, and a deprecation still holds.
            mark, _ = await self._mark(key)
            if mark.sequence == 0:
                return None
            return Head(mark.sequence, None, None, mark.deprecated)
        signed, revision = current
        return Head(signed.entry.sequence, revision, signed, signed.entry.deprecated)

    async def _try_write(self, key: str, signed: SignedEntry, revision: int | None) -> bool:
        try:
            await self._write(key, signed, revision)
        except FailedPrecondition:
            return False  # another replica wrote first: read its entry, try again
        return True

    async def _all(self, identifier: str | None = None) -> list[SignedEntry]:
        """Every trusted entry, or every one about identifier (its keys share
        the identifier as their first token)."""
        await self._store()  # made if missing
        keys = await jetstream.mapped(lambda: jetstream.kv_keys(self._js, self._bucket))
        if identifier is not None:
            keys = [key for key in keys if key.startswith(identifier + ".")]
        entries = []
        for key in keys:
            try:
                found = await self._read(key)
            except Rejected as exc:
                log.warning("marketplace entry %s is not trusted, skipped: %s", key, exc)
                continue
            if found is not None:
                entries.append(found[0])
        return entries

    async def _for(self, identifier: str) -> list[SignedEntry]:
        check_identifier(identifier)
        return [s for s in await self._all(identifier) if s.entry.identifier == identifier]

    async def get(self, identifier: str, endorser: str | None = None) -> SignedEntry:
        """The image's entry (the newest statement when several endorsers vouch for it)."""
        found = [
            s
            for s in await self._for(identifier)
            if endorser is None or s.entry.endorser.email.lower() == endorser.lower()
        ]
        if not found:
            raise _no_entry(identifier, endorser)
        return max(found, key=lambda s: s.entry.created)

    async def history(self, current: SignedEntry) -> list[Step]:
        """The statements about current's image by its endorser still kept,
        oldest first, each verified again (one no longer trusted, its key
        revoked since, is left out). current is the entry as get() returned
        it: the page has it already, and asks NATS once, not twice. The
        steps are kept while current is the key's newest statement and the
        keyring the same: a key's past statements change only with a new one."""
        key = _key(current.identifier, current.entry.endorser.email)
        kept = self._histories.get(key)
        if kept is not None and kept[:2] == (current.entry.sequence, self.keys):
            return kept[2]
        await self._store()
        documents = await jetstream.mapped(
            lambda: jetstream.kv_history(self._js, self._bucket, key)
        )
        trusted = []
        for document in documents:
            try:
                trusted.append(verify(document, self.keys))
            except Rejected as exc:
                log.info("a past statement of %s is not trusted, left out: %s", key, exc)
        found = steps(trusted)
        self._histories[key] = (current.entry.sequence, self.keys, found)
        return found

    async def search(self, query: Query, now: datetime | None = None) -> list[SignedEntry]:
        """Matching entries, newest first."""
        moment = now or datetime.now(UTC)
        found = [s for s in await self._all() if query.matches(s.entry, moment)]
        return sorted(found, key=lambda s: (s.entry.created, s.entry.identifier), reverse=True)

    async def deprecate(
        self, identifier: str, endorser: str | None = None, now: datetime | None = None
    ) -> SignedEntry:
        """Re-signs the endorser's entry with deprecated=true; with no
        endorser named, the one endorser this replica signs for that
        endorsed the image."""
        moment = now or datetime.now(UTC)
        endorser = endorser or self._only_endorser(identifier)
        current = await self.get(identifier, endorser)
        # Another tenant's entry is not there for this caller: the same words.
        await self.owners.check(
            _key(identifier, current.entry.endorser.email), _no_entry(identifier, endorser)
        )
        if current.entry.deprecated:
            return current
        signed, _ = await self._supersede(current, moment, "entry.deprecated", deprecated=True)
        return signed

    def _only_endorser(self, identifier: str) -> str | None:
        mine = self.keys.endorsers()
        if len(mine) > 1:
            raise InvalidArgument(
                f"this marketplace signs for {', '.join(mine)}: name the endorser "
                f"whose entry {identifier} to deprecate"
            )
        return mine[0] if mine else None

    async def _supersede(
        self, current: SignedEntry, now: datetime, event: str, **changes: Any
    ) -> tuple[SignedEntry, bool]:
        """Stores the next statement about current's image: the first replica
        to write wins; a loser returns the winner's entry, and False."""
        signer = self.keys.signer(current.entry.endorser.email)
        key = _key(current.identifier, signer.email)
        for _ in range(_CAS_ATTEMPTS):
            stored = await self._read(key)
            if stored is None:
                raise NotFound(f"no marketplace entry {current.identifier}")
            latest, revision = stored
            if all(getattr(latest.entry, k) == v for k, v in changes.items()):
                return latest, False  # done meanwhile, by another replica
            if changes.get("expired") and latest.entry.status(now) != "expired":
                return latest, False  # re-endorsed meanwhile: valid again
            changed = latest.entry.successor(now, **changes)
            # Signed with the endorser's current key, which may be a newer one.
            changed = replace(changed, endorser=Endorser(signer.email, signer.kid))
            signed = sign(changed, signer)
            if await self._try_write(key, signed, revision):
                await self._wrote(key, changed)
                await self._events.publish(event, changed.identifier, event_data(changed, now))
                return signed, True
        raise FailedPrecondition(f"entry {current.identifier} keeps changing; try again")

    async def sweep(self, now: datetime | None = None) -> list[SignedEntry]:
        """Marks every entry past its valid_until expired (re-signed) and
        returns those this call marked, so the caller retires their Glance
        images once. Entries of endorsers this replica cannot sign for stay
        as they are (they already read as expired)."""
        moment = now or datetime.now(UTC)
        mine = {email.lower() for email in self.keys.endorsers()}
        newly = []
        for signed in await self._all():
            entry = signed.entry
            if entry.expired or entry.deprecated or entry.status(moment) != "expired":
                continue
            if entry.endorser.email.lower() not in mine:
                continue
            after, wrote = await self._supersede(signed, moment, "entry.expired", expired=True)
            if wrote:
                newly.append(after)
        return newly
