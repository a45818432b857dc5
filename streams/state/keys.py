"""Every Redis key the engine names, built in one place (docs/hot-path.md lists them).

A member's keys are hash-tagged by member (`ly:m:{m-1}`, `ly:ev:{m-1}`, `ly:ob:{m-1}`,
`ly:h:{m-1}`, refunds held `ly:parked:{m-1}:<payment>`): the member's atomic step names
only them, so it runs on a Redis Cluster. Budgets (`ly:budget:{id}`), guests
(`ly:guest:{kind:id}`), leaderboard shards (`ly:lb:{board#n}`) and round outboxes
(`ly:outbox:{token}`) are a slot each; the rest are plain keys read or written one at a
time. tests/unit/test_redis_slots.py checks the slots of every call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Indexes of members whose outbox an HTTP write used (flushed by a timer after a crash).
OUTBOX_INDEX_SHARDS = 16
#: How long an open parking session is kept (a car that never exits leaves no key forever).
PARKING_SESSION_S = 30 * 86_400


@dataclass(frozen=True)
class Family:
    """A family of keys: its name, its pattern after `<namespace>:`, whether every key of
    it carries an expiry, and what bounds it (docs/reliability.md has the table)."""

    name: str
    pattern: str
    expires: bool
    bound: str


#: Every key the engine writes, by family. Keys that grow per event or per request expire;
#: the ones without an expiry are one per member, per bound id, per budget or an index
#: whose entries are removed when done. tests/integration/test_pipeline.py checks a
#: worker's namespace against it after traffic, the demo after its day.
FAMILIES = (
    Family("member", r"m:\{[^}]+\}", False, "one per member (state, balance, counters)"),
    Family("event records", r"ev:\{[^}]+\}", True, "the refund horizon (400 days), swept daily"),
    Family("member outbox", r"ob:\{[^}]+\}", True, "until the ledger topic has the rows; the horizon at most"),
    Family("history", r"h:\{[^}]+\}", True, "8 movements; the horizon"),
    Family("round outbox", r"outbox:\{[^}]+\}", True, "until its batch's rows are sent; 7 days at most"),
    Family("round outbox index", r"outboxes", False, "one key; an entry per round outbox not yet sent"),
    Family("member outbox index", r"obx:\d+", False, "16 keys; an entry per member with rows not yet sent"),
    Family("budget", r"budget:\{[^}]+\}", False, "one per budget the rules define; reservations end when settled"),
    Family("guest", r"guest:\{[^}]+\}", True, "the guest credit window"),
    Family("leaderboard", r"lbv?:\{[^}]+\}", True, "100 days after a board's last score"),
    Family("schedules", r"(tier_reviews|wallet_checks)", False, "an entry per member"),
    Family("identity", r"id:[^:]+:.+", False, "one per bound external id (a member's fact)"),
    Family("referral phone", r"ref-phone:.+", False, "one per phone that earned a referral (a member's fact)"),
    Family("plate", r"plate:.+", False, "one per bound plate (a member's fact)"),
    Family("parking session", r"park:[^:]+:.+", True, "until the exit; 30 days at most"),
    Family("parking exit", r"park-closed:.+", True, "30 days (an exit replayed within them is recognised)"),
    Family("held refunds", r"parked:\{[^}]+\}:.+", True, "a day past the held wait"),
    Family("held index", r"held", False, "an entry per payment with refunds held, until released or expired"),
    Family("gateway route", r"gwpay:.+", True, "LOYALTY_GATEWAY_ROUTE_DAYS (400)"),
    Family("pushed", r"pushed:.+", True, "90 days"),
    Family("nonce", r"nonce:.+", True, "LOYALTY_NONCE_WINDOW (600 s)"),
    Family("event claim", r"eid:.+", True, "LOYALTY_EVENT_CLAIM_DAYS (35)"),
    Family("rate limit", r"rl:.+", True, "2 s"),
    Family("operator", r"op:[a-z0-9_.-]+", False, "one per operator account (the bindings table has it)"),
    Family("operator index", r"operators", False, "one key; an entry per operator account"),
    Family("login failures", r"op-fail:.+", True, "LOYALTY_LOGIN_LOCK (900 s)"),
    Family("revoked session", r"op-revoked:.+", True, "a session's life (LOYALTY_CONSOLE_SESSION)"),
    Family("approval", r"approval:.+", True, "30 days (the bindings table has it)"),
    Family("rules lock", r"rules-lock", True, "30 s (held while a rules version is published)"),
    Family("audience send", r"audience-send:.+", True, "30 days (its coupons are the members' durable facts)"),
    Family("members of a send or run", r"(audience-send|campaign-run)-members:.+", True,
           "as long as the send's or run's record (written once; jobs.py)"),
    Family("campaign run", r"campaign-run:[^:]+:.+", True,
           "40 days (the audit trail has each run finished; its pushes are the members' facts)"),
    Family("alias", r"alias:.+", False, "one per merged account (a member's fact)"),
    Family("jobs", r"jobs:.+", False,
           "four keys; an entry per audience send, campaign run, merge or erasure while its record is kept"),
    Family("open jobs", r"open:.+", False,
           "four keys; an entry per audience send, campaign run, merge or erasure in progress, until it ends"),
    Family("jobs indexed", r"jobs-indexed", False, "one key: the indexes whose older records were indexed"),
    Family("approval index", r"approvals", False, "one key; an entry per approval, dropped with it after 30 days"),
    Family("merge", r"merge:.+", True, "67 days, past the undo window (the bindings table has it)"),
    Family("erasure", r"erasure:.+", True, "400 days; no member id in it once done (the bindings table has it)"),
    Family("mall order index", r"mall-orders", False, "an entry per points-mall order to collect, until collected, "
           "cancelled or expired"),
    Family("event waitlist", r"event-wait:.+", True, "one per members' event: its waiting members, until 30 days "
           "after it ends"),
    Family("event seats", r"event-in:.+", True, "one per members' event: its members with a seat, until 30 days "
           "after it ends"),
    Family("receipt claim", r"receipt:.+", True, "the receipts' maximum age + 30 days (the receipts "
           "table has it)"),
    Family("repair marker", r"repaired", False, "one key: the Redis process last checked by a repair"),
    Family("circle payment", r"circle:.+", True, "31 days after its points sync (the bindings table has it)"),
    Family("circle sync index", r"circle-due", False, "an entry per business-circle payment until its points "
           "are synced"),
    Family("circle member", r"circle-member:.+", False, "one per member who authorised the business circle "
           "(a member's fact)"),
)


def family_of(namespace: str, key: str) -> Family | None:
    """The family of a key of `namespace`, or None if no family has it."""
    prefix = namespace + ":"
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix):]
    for f in FAMILIES:
        if re.fullmatch(f.pattern, rest):
            return f
    return None

class KeySpace:
    """The keys of one namespace (`LOYALTY_REDIS_NAMESPACE`)."""

    def __init__(self, namespace: str) -> None:
        self.ns = namespace

    def member_key(self, member_id: str) -> str:
        return f"{self.ns}:m:{{{member_id}}}"

    def records_key(self, member_id: str) -> str:
        return f"{self.ns}:ev:{{{member_id}}}"

    def outbox_key(self, member_id: str) -> str:
        return f"{self.ns}:ob:{{{member_id}}}"

    def history_key(self, member_id: str) -> str:
        return f"{self.ns}:h:{{{member_id}}}"

    def budget_key(self, budget_id: str) -> str:
        return f"{self.ns}:budget:{{{budget_id}}}"

    def board_keys(self, board: str, shard: int) -> tuple[str, str]:
        """A leaderboard shard (`w:2026-W48:all#3`): its sorted set and versions hash."""
        return f"{self.ns}:lb:{{{board}#{shard}}}", f"{self.ns}:lbv:{{{board}#{shard}}}"

    def outbox_index_key(self, shard: int) -> str:
        return f"{self.ns}:obx:{shard}"

    @property
    def tier_reviews_key(self) -> str:
        return f"{self.ns}:tier_reviews"

    @property
    def wallet_checks_key(self) -> str:
        return f"{self.ns}:wallet_checks"

    def identity_key(self, kind: str, external_id: str) -> str:
        return f"{self.ns}:id:{kind}:{external_id}"

    def guest_key(self, kind: str, external_id: str) -> str:
        return f"{self.ns}:guest:{{{kind}:{external_id}}}"

    def pushed_key(self, push_id: str) -> str:
        return f"{self.ns}:pushed:{push_id}"

    def referral_phone_key(self, phone: str) -> str:
        return f"{self.ns}:ref-phone:{phone}"

    def gateway_route_key(self, payment_event_id: str) -> str:
        return f"{self.ns}:gwpay:{payment_event_id}"

    def parking_key(self, car_park: str, plate: str) -> str:
        return f"{self.ns}:park:{car_park}:{plate}"

    def parking_closed_key(self, exit_event_id: str) -> str:
        return f"{self.ns}:park-closed:{exit_event_id}"

    def plate_key(self, plate: str) -> str:
        return f"{self.ns}:plate:{plate}"

    def held_refunds_key(self, member_id: str, payment_id: str) -> str:
        """Refunds held until their payment is applied (the key's text, `parked`, predates the
        name and is kept so refunds held across an upgrade are still found)."""
        return f"{self.ns}:parked:{{{member_id}}}:{payment_id}"

    @property
    def repaired_key(self) -> str:
        """The run_id of the Redis process a repair last checked against the durable facts."""
        return f"{self.ns}:repaired"

    @property
    def round_outboxes_key(self) -> str:
        """The index of round outboxes by creation time (the sweeper's)."""
        return f"{self.ns}:outboxes"

    def round_outbox_key(self, token: str) -> str:
        return f"{self.ns}:outbox:{{{token}}}"

    @property
    def member_pattern(self) -> str:
        """SCAN pattern of every member's state hash."""
        return f"{self.ns}:m:*"

    def nonce_key(self, scoped_nonce: str) -> str:
        return f"{self.ns}:nonce:{scoped_nonce}"

    def event_claim_key(self, event_id: str) -> str:
        return f"{self.ns}:eid:{event_id}"

    def rate_key(self, client_key: str, second: int) -> str:
        return f"{self.ns}:rl:{client_key}:{second}"

    def operator_key(self, login: str) -> str:
        return f"{self.ns}:op:{login}"

    @property
    def operators_index_key(self) -> str:
        """The logins of every operator account."""
        return f"{self.ns}:operators"

    def login_failures_key(self, login: str) -> str:
        return f"{self.ns}:op-fail:{login}"

    def revoked_session_key(self, sid: str) -> str:
        return f"{self.ns}:op-revoked:{sid}"

    def approval_key(self, approval_id: str) -> str:
        return f"{self.ns}:approval:{approval_id}"

    @property
    def rules_lock_key(self) -> str:
        return f"{self.ns}:rules-lock"

    def audience_send_key(self, send_id: str) -> str:
        return f"{self.ns}:audience-send:{send_id}"

    def campaign_run_key(self, campaign: str, run: str) -> str:
        return f"{self.ns}:campaign-run:{campaign}:{run}"

    def alias_key(self, member_id: str) -> str:
        return f"{self.ns}:alias:{member_id}"

    def jobs_key(self, kind: str) -> str:
        """The index of a kind's jobs whose records are kept, scored by their last save."""
        return f"{self.ns}:jobs:{kind}"

    def open_jobs_key(self, kind: str) -> str:
        """The index of a kind's jobs in progress (streams/state/jobs.py)."""
        return f"{self.ns}:open:{kind}"

    @property
    def approvals_index_key(self) -> str:
        """Every approval of the last 30 days, scored by when it was asked."""
        return f"{self.ns}:approvals"

    @property
    def jobs_indexed_key(self) -> str:
        """The indexes whose records saved before the index existed have been indexed."""
        return f"{self.ns}:jobs-indexed"

    def merge_key(self, merge_id: str) -> str:
        return f"{self.ns}:merge:{merge_id}"

    def erasure_key(self, erasure_id: str) -> str:
        return f"{self.ns}:erasure:{erasure_id}"

    @property
    def mall_orders_key(self) -> str:
        return f"{self.ns}:mall-orders"

    def event_wait_key(self, event: str) -> str:
        return f"{self.ns}:event-wait:{event}"

    def event_in_key(self, event: str) -> str:
        return f"{self.ns}:event-in:{event}"

    def receipt_claim_key(self, receipt_id: str) -> str:
        return f"{self.ns}:receipt:{receipt_id}"

    def circle_payment_key(self, transaction_id: str) -> str:
        """A WeChat business-circle payment and its points sync (streams/state/circle.py)."""
        return f"{self.ns}:circle:{transaction_id}"

    @property
    def circle_due_key(self) -> str:
        """Business-circle payments whose points sync is due, by the time of its next try."""
        return f"{self.ns}:circle-due"

    def circle_member_key(self, member_id: str) -> str:
        """The openid and app id with which a member authorised the business circle."""
        return f"{self.ns}:circle-member:{member_id}"
