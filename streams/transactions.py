"""A member's synchronous operation, written once: read the member, let the core decide,
apply in Redis with the sequence check, send the ledger rows, then answer.

The HTTP operations (redemptions, coupons at the till, holds, reversals, engagement) and
the parking agent's exits all take this path; `decide` is the operation's own part:

    async def decide(seq: int, state: str | None) -> Response | Commit[Response]:
        ...  # a final answer (a retry's stored answer, a refusal), or what to write

A Commit is applied only if the member's sequence number is still `seq`; if another
writer moved it on, the member is read again and `decide` runs again (at most
MAX_ATTEMPTS times, then MemberBusy). When the Commit carries a movement, its ledger rows
are kept in the member's outbox by the same atomic step, sent to the ledger topic, and the
outbox entry is dropped (a crash in between leaves it for the outbox sweeper). Only then
is `Commit.done` asked for the answer (counters, logs, pushes that follow a success).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from streams.app import ledger_topic, runtime
from streams.errors import TransientError
from streams.messages import ledger_messages
from streams.state import EventMove, MemberMoves

T = TypeVar("T")

#: Sequence-checked tries before a member counts as busy.
MAX_ATTEMPTS = 20


class MemberBusy(TransientError):
    """A member's state kept moving for MAX_ATTEMPTS sequence-checked tries."""

    def __init__(self, member_id: str, attempts: int) -> None:
        super().__init__(f"member {member_id} kept changing for {attempts} tries")
        self.member_id = member_id


@dataclass
class Commit(Generic[T]):
    """What an operation writes: the member's new state, at most one movement (with its
    ledger rows), and how to answer once it is written."""

    state: str
    done: Callable[[], Awaitable[T]]
    move: EventMove | None = None
    #: When the member's wallet check is due next (a hold's or a partner's deadline).
    next_check_ms: int | None = None
    #: Budget units the movement consumes (campaign or stock id -> units), with the
    #: budgets' limits; reserved and settled with the write.
    campaigns: dict[str, int] = field(default_factory=dict)
    budgets: dict[str, int | None] = field(default_factory=dict)


async def transact(member_id: str, decide: Callable[[int, str | None], Awaitable[T | Commit[T]]],
                   attempts: int = MAX_ATTEMPTS) -> T:
    """Runs one operation on a member to its end (see the module's docstring)."""
    rt = await runtime.started()
    store = rt.balances
    for _ in range(attempts):
        seq, state, _balance = await store.member_state(member_id)
        decided = await decide(seq, state)
        if not isinstance(decided, Commit):
            return decided
        move = decided.move
        group = MemberMoves(member_id, seq, decided.state, None, decided.next_check_ms,
                            events=[move] if move is not None else [], campaigns=decided.campaigns,
                            outbox=True)
        (outcome,) = await store.apply([group], decided.budgets)
        if outcome != "ok":
            continue  # the state moved on (or a stock ran out meanwhile): decide again
        # The movement's rows and the member's new state, durable before the answer.
        sent = [move.event_id] if move is not None else []
        for payload in ledger_messages([*([move.rows] if move is not None else []), group.durable_rows], []):
            fut = await ledger_topic.send(value=payload, force=True)
            await fut
        await store.outbox_done(member_id, [*sent, group.state_entry])
        return await decided.done()
    raise MemberBusy(member_id, attempts)
