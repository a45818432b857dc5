"""Who is who: payers' external ids bound to members, guest payments kept as compact facts
until their payer joins, phones that earned a referral, car plates, and the routes of
gateway payments their refunds will need."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import orjson

from streams.state.base import StoreBase
from streams.state.records import guest_payment


class IdentityStore(StoreBase):
    """Bindings of external ids, plates and phones to members."""

    async def claim_referral_phone(self, phone: str, member_id: str) -> bool:
        """True if this (pseudonymised) phone number has not earned an inviter a reward for
        another member: the first registration with it claims it, and a redelivery of that
        same registration still finds it its own."""
        key = self.referral_phone_key(phone)
        await self.redis.set(key, member_id, nx=True)
        return await self.redis.get(key) == member_id

    async def resolve(self, kind: str, external_id: str) -> str | None:
        return cast(str | None, await self.redis.get(self.identity_key(kind, external_id)))

    async def resolve_many(self, payers: Sequence[tuple[str, str]]) -> list[str | None]:
        """Members of several payers in one round trip."""
        if not payers:
            return []
        # A pipeline of GETs, not MGET: on a cluster the payers' keys are in many slots.
        pipe = self.redis.pipeline(transaction=False)
        for kind, external_id in payers:
            pipe.get(self.identity_key(kind, external_id))
        return list(await pipe.execute())

    async def bind(self, kind: str, external_id: str, member_id: str) -> str:
        """Binds an external id to a member unless bound already; returns the owner."""
        # One command (SET NX GET): the owner it answers is the one that holds the binding.
        before = cast(str | None, await self.redis.set(self.identity_key(kind, external_id), member_id, nx=True,
                                                       get=True))
        return member_id if before is None else before

    async def guest_payments(self, kind: str, external_id: str) -> list[dict[str, Any]]:
        """A payer's guest payments as payment bodies without a member, oldest first."""
        facts = cast(dict[str, str], await self.redis.hgetall(self.guest_key(kind, external_id)))
        return sorted((guest_payment(event_id, fact) for event_id, fact in facts.items()),
                      key=lambda e: e["occurred_at"])

    async def forget_guest(self, kind: str, external_id: str) -> None:
        await self.redis.delete(self.guest_key(kind, external_id))

    async def plate_binding(self, plate: str) -> dict[str, str]:
        return cast(dict[str, str], await self.redis.hgetall(self.plate_key(plate)))

    async def bind_plate(self, plate: str, member_id: str, auto_pay: bool) -> str:
        """Binds a plate to a member unless another member has it; returns the owner."""
        key = self.plate_key(plate)
        owner: str | None = None
        while owner is None:  # an unbinding between the two commands: the plate is free again
            if await self.redis.hsetnx(key, "member_id", member_id):
                owner = member_id
            else:
                owner = cast(str | None, await self.redis.hget(key, "member_id"))
        if owner == member_id:
            await self.redis.hset(key, "auto_pay", "1" if auto_pay else "0")
        return owner

    async def remember_route(self, payment_event_id: str, route: dict[str, Any], keep_days: int) -> None:
        """What a gateway's refund notification will not say again: the payer and the BU,
        merchant and category its payment was routed to (WeChat refunds name no payer)."""
        await self.redis.set(self.gateway_route_key(payment_event_id), orjson.dumps(route), ex=keep_days * 86_400)

    async def route_of(self, payment_event_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.gateway_route_key(payment_event_id))
        return None if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]
