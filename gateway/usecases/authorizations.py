"""Authorizations over time: amendments and revocations, each a new version in force from its date."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

from gateway.domain import text
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.ledger import (
    authorizing_parties,
    check_definition,
    check_new_version,
    check_not_in_locked_reports,
    check_not_locked,
)
from gateway.domain.records import Authorization
from gateway.store.base import StoreConflict, Transaction
from gateway.usecases.base import GatewayBase, Idempotency


def check_revocation(version: str, reason: str) -> None:
    """Refuse a revoking version's label or reason the AEF report could not carry, naming the field."""
    text.check_identifier(version, "version", what="version")
    text.check_saying(reason, "reason", what="reason", why="the authorization is revoked")
    # The AEF writes NA for "does not apply": a version or a note spelled so would read back as none.
    text.check_not_na(version, "version")
    text.check_not_na(reason, "reason")


def revoking_version(latest: Authorization, version: str, date: dt.date, reason: str) -> Authorization:
    """The version that revokes an authorization from ``date``: ``latest`` repeated, revoked, with ``reason`` as its
    note. A version never expires before its own date: revoking after ``latest`` expired, it has no expiry
    (nothing acts under a revoked authorization anyway)."""
    expires = latest.expires if latest.expires is None or latest.expires >= date else None
    return dataclasses.replace(latest, version=version, date=date, revoked=True, note=reason, expires=expires)


class AuthorizationKeeping(GatewayBase):
    """Amending, revoking and listing authorizations."""

    async def amend_authorization(self, idem: Idempotency, authorization: Authorization) -> Authorization:
        """Record a new version of an authorization, in force from its date.

        Transfers, uses and cancellations dated from then on are checked against it; those dated before keep
        the version in force on their date. A version dated in a locked period is refused. A version that names
        no Party is the Party's of the version before.
        """
        check_definition(authorization, "authorization.first_transfer_definition")

        def build(latest: Authorization) -> Authorization:
            return authorization if authorization.party else dataclasses.replace(authorization, party=latest.party)

        return await self._new_version(idem, authorization.authorization_id, build, "authorization.")

    async def revoke_authorization(
        self, idem: Idempotency, authorization_id: str, version: str, date: dt.date, reason: str
    ) -> Authorization:
        """Record a version that revokes an authorization from ``date``: nothing may act under it afterwards.

        The revoking version repeats the version it follows, read in the same transaction. Units already first
        transferred under it stay so; the revocation only stops further actions.
        """
        check_revocation(version, reason)
        return await self._new_version(
            idem, authorization_id, lambda latest: revoking_version(latest, version, date, reason), ""
        )

    async def recorded_version(self, idem: Idempotency, authorization_id: str, *, first: bool) -> Authorization | None:
        """The version an earlier call with this key and this very request recorded (its first version, with
        ``first``: a registration), or None. A retry is answered as its first call was even where the request
        would be refused today: the rules it was taken in under may be older than this release's, and a refusal
        would tell the client that what is recorded was not."""
        async with self.store.read() as tx:
            try:
                previous = await self._replay(tx, idem)
            except GatewayError:
                return None  # no key, or a key used for another request: the refusal at hand stands
            if previous is None:
                return None
            versions = await tx.authorization_versions(authorization_id)
        if first:
            return versions[0] if versions else None
        return next((v for v in versions if v.version == previous), None)

    async def _new_version(
        self,
        idem: Idempotency,
        authorization_id: str,
        build: Callable[[Authorization], Authorization],
        fields: str,
    ) -> Authorization:
        """Record the version ``build`` makes from the latest one, in one transaction with its checks. A refusal
        names the request's field: the authorization's own under ``fields`` (``"authorization."`` when the
        request carries the whole authorization, ``""`` when it names its ID, version and date)."""
        try:
            return await self._record_version(idem, authorization_id, build, fields)
        except GatewayError as refused:
            if fields != "authorization." and refused.field and refused.field.startswith("authorization."):
                field = fields + refused.field.removeprefix("authorization.")
                raise GatewayError(refused.code, refused.message, field=field) from None
            raise

    async def _record_version(
        self,
        idem: Idempotency,
        authorization_id: str,
        build: Callable[[Authorization], Authorization],
        fields: str,
    ) -> Authorization:
        async with self.store.transaction() as tx:
            versions = await tx.authorization_versions(authorization_id)
            previous = await self._replay(tx, idem)
            if previous is not None:
                return next(v for v in versions if v.version == previous)
            if not versions:
                raise GatewayError(
                    ResponseCode.AUTHORIZATION_MISSING,
                    f"authorization {authorization_id[:128]!r} is not known here; register it first",
                    field=f"{fields}authorization_id",
                )
            authorization = build(versions[-1])
            await self._check_party_move(tx, versions, authorization)
            locks = await tx.locked_periods()
            if authorizing_parties([*versions, authorization], self.party)[authorization_id] == self.party:
                check_not_in_locked_reports(locks, authorization.date.year, "authorization.date", "the version's date")
            check_not_locked(locks, authorization.date.year, "authorization.date", "the version's date")
            check_new_version(versions, authorization, self.clock().date())
            try:
                async with tx.savepoint():
                    await tx.insert_authorization_version(authorization, self.clock())
            except StoreConflict:
                raise GatewayError(
                    ResponseCode.INVALID_ARGUMENT,
                    f"version {authorization.version!r} of {authorization.authorization_id!r} exists",
                    field="authorization.version",
                ) from None
            await self._remember(tx, idem, authorization.version)
        return authorization

    async def _check_party_move(self, tx: Transaction, versions: list[Authorization], new: Authorization) -> None:
        """Refuse a version that makes an authorization of this Party's (one whose versions named no Party, a copy
        registered without its Party included) another Party's while units here are tied to it: they would be
        counted under another Party's authorization. `check_new_version` refuses every other change of Party."""
        if not new.party or new.party == self.party:
            return
        if authorizing_parties(versions, self.party)[new.authorization_id] != self.party:
            return
        if await self._tied_here(tx, new.authorization_id):
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"units held or sent by {self.party} are tied to authorization {new.authorization_id!r}, so it stays"
                f" {self.party}'s; a version cannot make it {new.party}'s",
                field="authorization.party",
            )

    async def page_authorizations(
        self, authorization_id: str, *, after: int, limit: int
    ) -> list[tuple[int, Authorization]]:
        """Up to ``limit`` versions of every authorization (or of one) recorded after position ``after``, each with
        its position, in the order they were recorded (`Transaction.page_authorization_versions`)."""
        async with self.store.read() as tx:
            return await tx.page_authorization_versions(authorization_id, after=after, limit=limit)

    async def list_authorizations(self, authorization_id: str = "") -> list[Authorization]:
        """Every version of every authorization (or of one), in the order they were recorded."""
        async with self.store.read() as tx:
            if authorization_id:
                return await tx.authorization_versions(authorization_id)
            return await tx.list_authorization_versions()
