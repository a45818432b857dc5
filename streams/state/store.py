"""The engine's state in Redis: one client over the key space of keys.py, made of one store
per concern, each in its own module of streams/state:

- members.py: the member's atomic step for the HTTP paths (Redis Functions in
  functions.lua), event records, history, reconciliation scans;
- budgets.py: reservations on budgets' own keys; schedules.py: reviews and wallet checks;
- outbox.py: rows waiting for the ledger topic; boards.py: sharded leaderboards;
- identities.py: payers, guests, referral phones, plates, gateway routes;
- circle.py: WeChat business-circle payments to sync, members' circle authorisations;
- security.py: nonces, event-id claims, rate limits, delivered pushes;
- held.py: refunds held until their payment;
- operators.py: the back office's accounts, failed logins, approvals.

Keys of one member are hash-tagged by member (`ly:m:{m-1}`, `ly:ev:{m-1}`, `ly:ob:{m-1}`,
`ly:h:{m-1}`): the member's step names only them, so it runs on a Redis Cluster too.
Budgets (`ly:budget:{id}`), guest facts (`ly:guest:{kind:id}`) and leaderboard shards
(`ly:lb:{board#n}`) are keys of their own with their own idempotent steps. The accrual
hot path builds its commands in the Rust core (core_ext.AccrualBatch) and sends them
through `run` (streams/state/resp.py); the HTTP paths use `apply`.
"""

from __future__ import annotations

from streams.state.boards import BoardStore
from streams.state.circle import CircleStore
from streams.state.held import HeldRefundStore
from streams.state.identities import IdentityStore
from streams.state.mall import MallStore
from streams.state.members import MemberStore
from streams.state.operators import OperatorStore
from streams.state.outbox import OutboxStore
from streams.state.security import SecurityStore


class BalanceStore(MemberStore, OutboxStore, BoardStore, IdentityStore, SecurityStore, HeldRefundStore,
                   OperatorStore, MallStore, CircleStore):
    """Every concern's store over one connection: what the runtime holds as `balances`."""
