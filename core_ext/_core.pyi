"""Type stubs of the Rust extension `core_ext._core` (the loyalty engine's pure core)."""

from typing import Any, Literal, final

__all__ = [
    "EventBatch",
    "InvalidEventError",
    "LoyaltyCoreError",
    "RejectedEventError",
    "RuleSet",
    "RulesError",
    "__version__",
    "coupon_wallet",
    "engage",
    "engagement_view",
    "evaluate_batch",
    "hold_points",
    "liability_by_expiry",
    "member_view",
    "parking_exit",
    "rebuild_member",
    "redeem",
    "redeem_coupon",
    "release_hold",
    "reverse_redemption",
    "simulate",
    "validate_member_event",
    "validate_payment",
    "wallet_total",
]

__version__: str

class LoyaltyCoreError(ValueError):
    """Base class of every error raised by the loyalty core."""

    field: str
    reason: str

class InvalidEventError(LoyaltyCoreError):
    """An event body that cannot be accepted; `.field` and `.reason` say why."""

class RulesError(LoyaltyCoreError):
    """A rule set that cannot be loaded; `.file`, `.line`, `.field` and `.reason` say where and why."""

    file: str
    line: int

class RejectedEventError(LoyaltyCoreError):
    """A well-formed event that the rules or the member's state cannot apply."""

@final
class RuleSet:
    """A validated, compiled rule set."""

    @staticmethod
    def from_toml(text: str, path: str = "<string>") -> RuleSet:
        """Parses and validates TOML rules; raises RulesError naming file, line and field."""
    @property
    def version(self) -> str: ...
    @property
    def tier_ids(self) -> list[str]:
        """Tier ids, lowest first."""
    @property
    def default_tier(self) -> str:
        """The tier of a member who has none (the first one)."""
    @property
    def business_units(self) -> list[tuple[str, str]]:
        """(business unit id, format), sorted."""
    @property
    def campaigns(self) -> list[tuple[str, int | None]]:
        """(campaign id, budget points or None), in file order."""
    @property
    def budgets(self) -> list[tuple[str, int]]:
        """Every budget the atomic apply checks: campaigns (points), `trigger:<id>` and
        `stock:<template>` (coupons), with their limits."""
    @property
    def trigger_kinds(self) -> list[str]:
        """The kinds of the marketing triggers in the rules (e.g. "parking_exit"), sorted."""
    @property
    def coupon_templates(self) -> list[str]:
        """Coupon template ids, sorted."""
    @property
    def car_parks(self) -> list[str]:
        """Car park business unit ids, sorted."""
    def game_budgets(self, game: str) -> list[tuple[str, int]]:
        """The stocks a play of `game` may take: (budget id, units) of its prizes
        (`prize:<game>:<prize>`) and of their coupon templates (`stock:<template>`)."""
    @property
    def games(self) -> list[str]:
        """Game ids, sorted."""
    @property
    def utc_offset_minutes(self) -> int:
        """The group's local time offset (dates, days, months)."""
    @property
    def guest_credit_days(self) -> int:
        """Days within which registering credits a guest's payments (0: never)."""

_Keys = tuple[str | None, str | None, str | None, tuple[str, str] | None, int, str]

@final
class EventBatch:
    """A batch of raw event bodies (payments, refunds, member events), decoded once (GIL released)."""

    @staticmethod
    def decode(bodies: list[bytes]) -> EventBatch: ...
    def __len__(self) -> int: ...
    def keys(self) -> list[_Keys]:
        """Per event: (event_id, member_id, refund_of, payer, occurred_at_ms, type);
        (None, None, None, None, 0, "") for an invalid body; member_id None for a guest payment."""
    def bindings(self) -> list[tuple[int, str, str, str]]:
        """External ids that registrations bind: (event index, member_id, kind, id)."""
    def boards(self, rules: RuleSet) -> list[tuple[str, str, str] | None]:
        """Per event, the leaderboards a member's payment or refund counts on:
        (bu_id, ISO week "YYYY-Www", month "YYYY-MM") in local time; None otherwise."""
    def referrals(self) -> list[tuple[int, str, str]]:
        """Registrations naming their inviter: (event index, new member id, inviter id)."""

def validate_payment(body: bytes) -> tuple[str, str | None, Literal["payment", "refund"], tuple[str, str] | None]:
    """Validates one raw payment/refund; returns (event_id, member_id or None, type, payer or None)."""

def validate_member_event(body: bytes) -> tuple[str, str, str]:
    """Validates one raw member event; returns (event_id, member_id, type)."""

_Outcome = tuple[
    Literal["apply", "guest", "duplicate", "rejected"],
    int,  # points delta (negative for a clawback)
    str | None,  # apply: the event's ledger rows (JSON array); guest: the fact (JSON object)
    str | None,  # refund_of (refunds only)
    int,  # amount_fen of the event
    int,  # clawback points (refunds only)
    list[tuple[str, int]],  # campaign budget consumed: (campaign id, points)
    str | None,  # error field (rejected only)
    str | None,  # error reason (rejected only)
    str | None,  # a notification for the member (an expiry reminder), JSON
    tuple[int, int, int],  # points the record keeps, points used at the till, points given back
]
# member_id, expected seq, state JSON, tier review_at_ms, next wallet check ms
_MemberUpdate = tuple[str, int, str, int | None, int | None]

def evaluate_batch(
    rules: RuleSet,
    batch: EventBatch,
    applied: list[bool],
    originals: list[tuple[int, int, int, int, int, int] | None],
    members: dict[str, tuple[int, str | None]],
    budget_spent: dict[str, int],
    now_ms: int,
) -> tuple[list[_Outcome], list[_MemberUpdate]]:
    """Outcome of every event of `batch`, in order, and each touched member's new state.

    applied: the event id was applied by an earlier batch (outcome "duplicate").
    originals: for refunds, the refunded payment as stored: (amount_fen, points earned,
        refunded_amount_fen, refunded_points, points used at the till, used points given back).
    members: member id -> (stored sequence number, stored state JSON or None).
    budget_spent: campaign id -> points of its budget already spent.
    """

def member_view(rules: RuleSet, state_json: str | None, now_ms: int) -> dict[str, Any]:
    """Tier, qualified tier, window totals, progress to the next tier, review date, benefits."""

def simulate(rules: RuleSet, bodies: list[bytes]) -> dict[str, Any]:
    """Replays payment/refund bodies (oldest first) through `rules` from empty member states."""

def redeem(
    rules: RuleSet, state_json: str | None, redemption_id: str, body: bytes, now_ms: int
) -> tuple[Literal["redeemed", "insufficient"], str | None, str | None, str]:
    """Spends points for a redemption request (oldest spendable lots first).

    Returns (status, new state JSON, ledger rows JSON, answer JSON); for "insufficient"
    the state and rows are None and the answer carries `available` and `needed`.
    Raises InvalidEventError for a bad request (unknown kind, business unit, points...).
    """

def reverse_redemption(
    rules: RuleSet, state_json: str | None, stored_rows_json: str, now_ms: int
) -> tuple[str, str, str]:
    """Gives a redemption's points back to the very lots they came from:
    (new state JSON, ledger rows JSON, answer JSON)."""

def rebuild_member(
    rules: RuleSet, rows_json: str, now_ms: int
) -> tuple[str, int, list[tuple[str, str, int, int, int, int, int, int]], int | None, int | None]:
    """A member's state rebuilt from their ledger rows (JSON array, in applied order):
    (state JSON, balance, event records, tier review_at_ms, next wallet check ms); a record
    is (event_id, kind, amount_fen, points, refunded_amount_fen, refunded_points, used, returned_used)."""

def hold_points(
    rules: RuleSet, state_json: str | None, hold_id: str, points: int, ttl_ms: int, now_ms: int
) -> tuple[Literal["held", "insufficient"], str | None, str]:
    """Locks points (oldest lots first) for a checkout: (status, new state JSON, answer JSON)."""

def release_hold(state_json: str | None, hold_id: str) -> tuple[str | None, int]:
    """Gives a hold back to its lots: (new state JSON, points), or (None, 0) if there is no such hold."""

def parking_exit(
    rules: RuleSet,
    car_park: str,
    exit_event_id: str,
    member_id: str | None,
    state_json: str | None,
    entry_ms: int,
    exit_ms: int,
    coupon_minutes: int,
    auto_pay: bool,
) -> tuple[str, str | None, str | None]:
    """Prices an exit (schedule, tier, same-day spend, coupon, points): (fee JSON, new
    state JSON, ledger rows JSON); state and rows are None when no points were used."""

def wallet_total(state_json: str | None) -> int:
    """Lots + pending + held points - negative balance of a stored state (what the balance must equal)."""

def redeem_coupon(rules: RuleSet, state_json: str | None, body: bytes, now_ms: int) -> tuple[bool, str, str, str]:
    """Redeems a coupon at the till: (changed, new state JSON, coupon rows JSON, result JSON).
    `changed` is False for a retry (already redeemed for this payment_id). Raises
    InvalidEventError (bad body) or RejectedEventError (wrong owner, used, expired, below
    threshold, out of scope) naming the reason."""

def coupon_wallet(rules: RuleSet, state_json: str | None, now_ms: int) -> str:
    """The member's coupons (newest first) as a JSON array."""

def liability_by_expiry(rules: RuleSet, states_json: list[str | None]) -> list[tuple[str, int]]:
    """The live points liability by expiry month ("YYYY-MM", or "never") over stored states:
    available lots, pending and held points."""

# new state JSON, rows JSON (ledger rows, coupon rows, game_draws / stored_value rows),
# answer JSON, points delta, stored-value delta (fen), amount the record keeps,
# the record a refund is of, budgets consumed, an event to publish (JSON) or None
_Engaged = tuple[str, str, str, int, int, int, str | None, list[tuple[str, int]], str | None]

def engage(
    rules: RuleSet, op: str, state_json: str | None, op_id: str, body: bytes, context_json: str, now_ms: int
) -> _Engaged:
    """An engagement operation on a stored state: op is one of game_play, sign_in,
    sign_in_makeup, sign_in_contract, exchange_out, exchange_settle, exchange_in,
    sv_topup, sv_pay, sv_refund; `op_id` is its idempotency key.

    context_json: {"draw": int in [0, 1000000) (games), "spent": {budget id: units taken},
    "original": {"amount_fen", "refunded_fen", "bu_id", "merchant_id", "category"} (a
    stored-value refund's payment)}. Raises InvalidEventError for a bad request and
    RejectedEventError when the rules or the state refuse it (insufficient points or
    stored value, a daily limit, a closed game...), naming the field and the reason.
    """

def engagement_view(rules: RuleSet, state_json: str | None, now_ms: int) -> str:
    """Plays today per game, cards held, sign-in plans, pending exchanges, stored value,
    profile fields and rewards, referrals (JSON)."""
