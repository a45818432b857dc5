"""Claims that make requests and deliveries count once: signed requests' nonces, event ids
claimed at the ingress, per-client rate limits, and pushes already delivered."""

from __future__ import annotations

import time
from collections.abc import Sequence

from streams.state.base import StoreBase
from streams.state.resp import pack


class SecurityStore(StoreBase):
    """Nonces, event-id claims, rate limits and delivered pushes."""

    async def claim_nonce(self, scope: str, nonce: str, window_s: int) -> bool:
        """True the first time a signed request's nonce is seen within the window (SET NX)."""
        return bool(await self.redis.set(self.nonce_key(f"{scope}:{nonce}"), 1, nx=True, ex=window_s))

    async def claim_nonces(self, claims: Sequence[tuple[str, str]], window_s: int) -> list[bool]:
        """Several (scope, nonce) claims in one round trip (the ingress's hot path: packed
        here and parsed by hiredis, not re-encoded argument by argument)."""
        window = str(window_s).encode()
        replies = await self.run([pack(b"SET", self.nonce_key(f"{scope}:{nonce}").encode(), b"1", b"NX", b"EX", window)
                                  for scope, nonce in claims], "nonce claims")
        return [r is not None for r in replies]

    async def claim_events(self, claims: Sequence[tuple[str, str, str | None]], keep_s: int,
                           nonce_window_s: int) -> list[tuple[bool, str | None]]:
        """Several (event id, claimant, nonce or None) claims in one round trip: `SET NX GET`
        on the event id's own key (one key each: no cross-slot step on a cluster), and the
        callback's nonce (`scope:nonce`) taken as `claim_nonces` takes it. Per claim: whether
        the nonce was new (True without one), and None where the id's claim is new, else
        whoever claimed it first (a retry of the same sender: itself)."""
        keep, window = str(keep_s).encode(), str(nonce_window_s).encode()
        commands: list[bytes] = []
        for event_id, claimant, nonce in claims:
            if nonce is not None:
                commands.append(pack(b"SET", self.nonce_key(nonce).encode(), b"1", b"NX", b"EX", window))
            commands.append(pack(b"SET", self.event_claim_key(event_id).encode(), claimant.encode(), b"NX", b"GET",
                                 b"EX", keep))
        replies = iter(await self.run(commands, "event claims"))
        out: list[tuple[bool, str | None]] = []
        for _event_id, _claimant, nonce in claims:
            fresh = next(replies) is not None if nonce is not None else True
            first = next(replies)
            out.append((fresh, None if first is None else first.decode() if isinstance(first, bytes) else str(first)))
        return out

    async def rate_hit(self, client_key: str, limit_per_s: int, second: int | None = None) -> bool:
        """Counts one request of a client in the current (Unix) second; False past the limit."""
        second = int(time.time()) if second is None else second
        key = self.rate_key(client_key, second)
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 2)
        count, _ = await pipe.execute()
        return int(count) <= limit_per_s

    async def pushed(self, push_ids: Sequence[str]) -> list[bool]:
        """Which pushes were delivered already (answered 2xx by the webhook): one round trip
        on the raw channel (packed here, parsed by hiredis; the notifier's hot path)."""
        if not push_ids:
            return []
        replies = await self.run([pack(b"EXISTS", self.pushed_key(pid).encode()) for pid in push_ids], "pushed")
        return [bool(x) for x in replies]

    async def mark_pushed(self, push_ids: Sequence[str], keep_days: int = 90) -> None:
        if not push_ids:
            return
        keep = str(keep_days * 86_400).encode()
        await self.run([pack(b"SET", self.pushed_key(pid).encode(), b"1", b"EX", keep) for pid in push_ids],
                       "mark pushed")
