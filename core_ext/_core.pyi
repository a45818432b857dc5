"""Type stubs of the Rust extension `core_ext._core` (the loyalty engine's pure core)."""

from typing import Any, Literal, final

__all__ = [
    "AccrualBatch",
    "BatchReport",
    "CorruptStateError",
    "DeadLetter",
    "Evaluation",
    "EventBatch",
    "EventInfo",
    "EventOutcome",
    "HeldRefund",
    "InvalidArgumentError",
    "InvalidEventError",
    "LedgerBlocks",
    "LoyaltyCoreError",
    "LoyaltyError",
    "MemberUpdate",
    "Message",
    "OutcomeKind",
    "RejectedEventError",
    "RuleSet",
    "RulesError",
    "TableBlock",
    "__version__",
    "board_commands",
    "board_shard",
    "candidate_boards",
    "check_image_name",
    "check_json_object",
    "check_member_event",
    "coupon_wallet",
    "decode_event",
    "engage",
    "engagement_view",
    "envelope_pack",
    "envelope_unpack",
    "evaluate_batch",
    "events_catalogue",
    "hold_points",
    "ledger_blocks",
    "ledger_schema_mismatches",
    "ledger_tables",
    "liability_by_expiry",
    "mall_catalogue",
    "member_view",
    "next_wallet_check_ms",
    "parking_exit",
    "rebuild_member",
    "receipt_id",
    "record_fields",
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

class LoyaltyError(Exception):
    """Root of every error the engine raises: the core's (LoyaltyCoreError) and the service's (streams.errors)."""

class LoyaltyCoreError(LoyaltyError, ValueError):
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

class CorruptStateError(LoyaltyCoreError):
    """A stored value (a member's state, a Redis reply) that the core cannot read: not what it wrote."""

class InvalidArgumentError(LoyaltyCoreError):
    """An argument of a core call out of its range (a programming or configuration error)."""

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
    def receipts_max_age_days(self) -> int | None:
        """Receipt points (`[receipts]`): the oldest receipt taken, in days; None when the
        rules do not offer them."""
    @property
    def points_validity_months(self) -> int | None:
        """Points lots expire at the end of the month this many months after earning
        (None: never)."""
    @property
    def scheduled_campaigns_json(self) -> str:
        """The scheduled campaigns (`[[scheduled_campaigns]]`) as JSON: a list of objects
        with id, name, schedule ({every, minute, weekday, day, at_ms}), from_ms, to_ms,
        audience_id, audience, action ({kind: coupon, template} or {kind: notice, message}),
        once_per_dormancy, capped."""
    @property
    def audiences_json(self) -> str:
        """The saved audiences (`[audiences.<id>]`) as JSON: an object of id -> conditions
        (tiers, tags, segments, bu, formats, dormant_days, paid_within_days, birthday_month,
        points_expiring_within_days, min_points, registered_within_days, holds_coupon)."""
    @property
    def frequency_cap(self) -> tuple[int, int] | None:
        """`[frequency_cap]`: (pushes, days), or None."""
    @property
    def car_parks(self) -> list[str]:
        """Car park business unit ids, sorted."""
    def mall_budgets(self, item: str) -> list[tuple[str, int]]:
        """The stocks an exchange of a points-mall item takes: (budget id, limit), the
        item's (`mall:<item>`) and its coupon template's (`stock:<template>`)."""
    def game_budgets(self, game: str) -> list[tuple[str, int]]:
        """The stocks a play of `game` may take: (budget id, units) of its prizes
        (`prize:<game>:<prize>`) and of their coupon templates (`stock:<template>`)."""
    @property
    def games(self) -> list[str]:
        """Game ids, sorted."""
    @property
    def leaderboards(self) -> list[tuple[str, str]]:
        """Leaderboards the rules define: (period "week"|"month", scope "group"|"bu")."""
    @property
    def utc_offset_minutes(self) -> int:
        """The group's local time offset (dates, days, months)."""
    @property
    def guest_credit_days(self) -> int:
        """Days within which registering credits a guest's payments (0: never)."""

@final
class EventBatch:
    """A batch of raw records (single events or envelopes of them), decoded once (GIL released)."""

    @staticmethod
    def decode(records: list[bytes]) -> EventBatch: ...
    def __len__(self) -> int: ...

def validate_payment(
    body: bytes,
    rules: RuleSet | None = None,
    now_ms: int | None = None,
    max_age_days: int = 400,
    max_ahead_days: int = 1,
) -> tuple[str, str | None, Literal["payment", "refund"], tuple[str, str] | None]:
    """Validates one raw payment/refund; returns (event_id, member_id or None, type, payer or None).
    With now_ms its time must be inside the window; with rules a payment above its merchant's
    or business unit's maximum raises RejectedEventError (field amount_fen)."""

def validate_member_event(
    body: bytes, now_ms: int | None = None, max_age_days: int = 400, max_ahead_days: int = 1
) -> tuple[str, str, str]:
    """Validates one raw member event; returns (event_id, member_id, type)."""

def check_json_object(body: bytes) -> None:
    """Raises InvalidEventError (field body) unless the body is one JSON object with no
    key repeated at any depth."""

@final
class OutcomeKind:
    """What became of an event."""

    APPLIED: OutcomeKind
    DUPLICATE: OutcomeKind
    GUEST: OutcomeKind
    REJECTED: OutcomeKind
    HELD: OutcomeKind
    """A refund of a payment not applied yet: held until it is."""
    PENDING: OutcomeKind
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    def __int__(self) -> int: ...

@final
class EventOutcome:
    """One event's outcome of `evaluate_batch`."""

    @property
    def kind(self) -> OutcomeKind: ...
    @property
    def points(self) -> int:
        """Balance movement (negative for a clawback; 0 unless applied)."""
    @property
    def rows_json(self) -> str | None:
        """Applied: the event's ledger rows (JSON array); guest: the fact (JSON object)."""
    @property
    def refund_of(self) -> str | None: ...
    @property
    def amount_fen(self) -> int: ...
    @property
    def clawback_points(self) -> int: ...
    @property
    def campaigns(self) -> list[tuple[str, int]]:
        """Budgets consumed: (budget id, units)."""
    @property
    def field(self) -> str | None:
        """Rejected or held: the field it is about."""
    @property
    def reason(self) -> str | None: ...
    @property
    def notice(self) -> str | None:
        """A notification for the member (an expiry reminder), JSON."""
    @property
    def record_points(self) -> int: ...
    @property
    def used_points(self) -> int: ...
    @property
    def returned_points(self) -> int: ...
    @property
    def boards(self) -> list[tuple[str, int]]:
        """Leaderboards moved: (board, the member's new score)."""

@final
class MemberUpdate:
    """A member's state after a batch, written only if the stored sequence number is still `expected_seq`."""

    @property
    def member_id(self) -> str: ...
    @property
    def expected_seq(self) -> int: ...
    @property
    def state_json(self) -> str: ...
    @property
    def review_at_ms(self) -> int | None: ...
    @property
    def next_check_ms(self) -> int | None: ...

@final
class Evaluation:
    """`evaluate_batch`'s answer."""

    @property
    def outcomes(self) -> list[EventOutcome]: ...
    @property
    def members(self) -> list[MemberUpdate]: ...

def evaluate_batch(
    rules: RuleSet,
    batch: EventBatch,
    applied: list[bool],
    originals: list[tuple[int, int, int, int, int, int] | None],
    members: dict[str, tuple[int, str | None]],
    budget_spent: dict[str, int],
    now_ms: int,
) -> Evaluation:
    """Outcome of every event of `batch`, in order, and each touched member's new state.

    applied: the event id was applied by an earlier batch (outcome DUPLICATE).
    originals: for refunds, the refunded payment as stored: (amount_fen, points earned,
        refunded_amount_fen, refunded_points, points used at the till, used points given back).
    members: member id -> (stored sequence number, stored state JSON or None).
    budget_spent: budget id -> units already taken.
    """

@final
class EventInfo:
    """What one event says of itself."""

    @property
    def event_id(self) -> str: ...
    @property
    def member_id(self) -> str | None: ...
    @property
    def kind(self) -> str:
        """payment, refund, register, sign_in, ..."""
    @property
    def occurred_at_ms(self) -> int: ...
    @property
    def refund_of(self) -> str | None: ...
    @property
    def payer_kind(self) -> str | None: ...
    @property
    def payer_id(self) -> str | None: ...
    @property
    def bindings(self) -> list[tuple[str, str]]:
        """External ids a registration binds: (kind, id)."""
    @property
    def referred_by(self) -> str | None: ...

def decode_event(body: bytes) -> EventInfo:
    """Decodes and validates one event body; raises InvalidEventError naming the field."""

def envelope_pack(bodies: list[bytes], compressed: bool = False) -> bytes:
    """Packs event bodies into one envelope record (docs/envelopes.md): version 1, or
    version 2 (compressed) if asked."""

def envelope_unpack(record: bytes) -> list[bytes]:
    """The bodies a record holds (an envelope's, compressed or not, or the record itself);
    raises InvalidEventError (field "envelope") for a corrupt envelope."""

@final
class BatchReport:
    """Counts of an accrual batch."""

    @property
    def events(self) -> int: ...
    @property
    def applied(self) -> int: ...
    @property
    def duplicates(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def guests(self) -> int: ...
    @property
    def held(self) -> int: ...
    @property
    def points_issued(self) -> int: ...
    @property
    def points_debited(self) -> int: ...
    @property
    def ledger_rows(self) -> int: ...
    @property
    def conflicts(self) -> int: ...
    @property
    def rounds(self) -> int: ...
    @property
    def resent(self) -> int:
        """Duplicates whose rows an earlier delivery left in the outbox: sent again."""
    @property
    def mismatched(self) -> int:
        """Events whose id was applied already with other content: refused, the first stays."""

@final
class DeadLetter:
    """An event refused: its body, why, and its id if it has one."""

    @property
    def event_id(self) -> str | None: ...
    @property
    def field(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def body(self) -> bytes: ...

@final
class HeldRefund:
    """A refund held until its payment is applied."""

    @property
    def member_id(self) -> str: ...
    @property
    def payment_id(self) -> str: ...
    @property
    def body(self) -> bytes: ...

@final
class Message:
    """A Kafka message to send."""

    @property
    def key(self) -> bytes: ...
    @property
    def value(self) -> bytes: ...

@final
class TableBlock:
    """One table's rows of a batch of ledger messages, as a RowBinary block."""

    @property
    def table(self) -> str: ...
    @property
    def columns(self) -> list[str]: ...
    @property
    def rows(self) -> int: ...
    @property
    def data(self) -> bytes: ...
    @property
    def identity(self) -> bytes:
        """The rows' identities (event ids and kinds), for the insert's deduplication token."""

@final
class LedgerBlocks:
    """A batch of ledger-topic messages as ClickHouse blocks."""

    @property
    def tables(self) -> list[TableBlock]:
        """Tables with rows, in insert order."""
    @property
    def boards(self) -> list[tuple[str, str, int, int]]:
        """Leaderboard scores the rows carry: (board, member, score, version)."""
    @property
    def board_plan(self) -> list[bytes]:
        """The `ly_board` calls (RESP) for `boards`, when the boards' keys were given."""
    @property
    def poison(self) -> list[tuple[int, str]]:
        """Messages that cannot be stored: (index in the batch, reason); none of their rows is in the blocks."""

def board_commands(namespace: str, updates: list[tuple[str, str, int, int]], shards: int, ttl_s: int) -> list[bytes]:
    """`ly_board` calls (RESP) for leaderboard updates (board, member, score, version): one
    per board shard, each naming the keys of one slot."""

def board_shard(member: str, shards: int) -> int:
    """The shard of a board a member's score lives in."""

def candidate_boards(bu_id: str, at_ms: int, utc_offset_minutes: int) -> list[str]:
    """Every board (week and month, group-wide and per business unit) that an event at
    `bu_id`, `at_ms` could count on, whatever the rules define."""

def ledger_blocks(messages: list[bytes], boards: tuple[str, int, int] | None = None) -> LedgerBlocks:
    """Encodes ledger-topic messages into one RowBinary block per table and, given the
    boards' (namespace, shards, ttl_s), the leaderboard calls their scores need (GIL
    released for both)."""

def ledger_schema_mismatches(describe: list[tuple[str, str, str]]) -> list[str]:
    """Columns whose ClickHouse type is not what the ledger blocks write, from
    (table, column, type) rows; empty when the schema fits."""

def ledger_tables() -> list[tuple[str, list[str]]]:
    """The tables the ledger blocks write: (table, columns in insert order)."""

@final
class AccrualBatch:
    """A batch of Kafka records on its way through the accrual rounds: each `*_plan` is a
    list of Redis commands (RESP bytes) to send as they are, each `*_done` takes their
    replies (as hiredis parses them) in order. See docs/hot-path.md."""

    def __new__(
        cls, rules: RuleSet, records: list[bytes], namespace: str, now_ms: int, horizon_days: int,
        history_len: int, members_per_call: int = 1,
    ) -> AccrualBatch:
        """`members_per_call`: members written by one ly_apply call (1 on a Redis Cluster,
        where each call must name one hash slot)."""
    def __len__(self) -> int: ...
    def pending(self) -> int:
        """Events not settled yet (their members conflicted; another round takes them)."""
    def read_plan(self) -> list[bytes]:
        """One ly_read per member with pending events, then one HGET per budget; empty when done."""
    def read_done(self, replies_: list[Any]) -> None:
        """Takes the read's replies and evaluates the round (the GIL is released meanwhile)."""
    def reserve_plan(self) -> list[bytes]: ...
    def reserve_done(self, replies_: list[Any]) -> None: ...
    def outbox_plan(self, token: str, ttl_s: int) -> list[bytes]:
        """The round's outbox: the ledger rows of the events about to be written, in one key
        (a SET with a TTL) that their records name; to send before `write_plan`."""
    def resend_plan(self) -> list[bytes]:
        """After the rounds: reads of the outboxes that duplicates' records name."""
    def resend_done(self, replies_: list[Any]) -> None:
        """The rows of those duplicates an outbox still holds are sent again."""
    def write_plan(self) -> list[bytes]:
        """ly_apply calls for the members to write, up to `members_per_call` members each."""
    def write_done(self, replies_: list[Any]) -> int:
        """Returns how many members conflicted (their events go to the next round)."""
    def settle_plan(self) -> list[bytes]: ...
    def guest_plan(self, ttl_s: int) -> list[bytes]: ...
    def guest_done(self, replies_: list[Any]) -> None: ...
    def ledger_messages(self) -> list[bytes]:
        """The ledger-topic messages: rows of applied events and re-sent outbox rows, guest facts."""
    def trim_plan(self) -> list[bytes]:
        """Once the ledger messages are acked: the round outboxes to delete and the members'
        recent movements to push."""
    def report(self) -> BatchReport: ...
    def dead_letters(self) -> list[DeadLetter]: ...
    def held(self) -> list[HeldRefund]: ...
    def kinds(self) -> list[OutcomeKind]: ...
    def schedules(self) -> tuple[dict[str, int], dict[str, int]]:
        """Tier reviews and wallet checks to schedule: ({member: when_ms}, {member: when_ms})."""
    def schedule_plan(self, reviews_key: str, checks_key: str) -> list[bytes]:
        """ZADDs of the tier reviews and wallet checks of the members written."""
    def release(self) -> None:
        """Gives the batch's memory back (the GIL released while it is freed)."""
    def paid_with_held(self) -> list[tuple[str, str]]:
        """(member, payment id) of payments applied for members with refunds held."""
    def pushes(self) -> list[Message]:
        """Coupon pushes (issued coupons), keyed by member."""
    def notices(self) -> list[Message]:
        """Member notices (expiry reminders), keyed by member."""
    def registrations(self) -> list[bytes]:
        """Bodies of registrations applied (ids to bind, guest payments to credit)."""
    def invitations(self) -> list[bytes]:
        """Bodies of registrations applied or seen again (their referral may be owed)."""

def check_member_event(rules: RuleSet, state_json: str | None, body: bytes, now_ms: int) -> None:
    """Whether a member event (a merge's half, an erasure...) would apply to this state
    now: None if it would; RejectedEventError / InvalidEventError (with `field`) if not."""

def mall_catalogue(
    rules: RuleSet, state_json: str | None, spent: dict[str, int], now_ms: int
) -> list[dict[str, Any]]:
    """The points mall's catalogue as a member sees it: every item with its price, kind,
    stock left, window, and `can_buy` (else `why_not` and its `field`), sorted by id."""

def events_catalogue(
    rules: RuleSet, state_json: str | None, spent: dict[str, int], now_ms: int
) -> list[dict[str, Any]]:
    """The members' events (`[[member_events]]`) sorted by start: seats left (from `spent`,
    the seats budgets), window, cost, who may come; with a member's state, `can_sign_up`
    (else `why_not` and its `field`)."""

def check_image_name(name: str) -> None:
    """Raises InvalidEventError (field "image") unless `name` is an uploaded image's name:
    64 hex digits (its SHA-256) and jpg, png, webp or gif; never a path."""

def receipt_id(merchant_id: str, receipt_no: str) -> str:
    """A receipt's id (`rc-` and 32 hex digits) from its merchant and receipt number: the
    same whoever submits it; the receipt's operation and its payment's event id."""

def member_view(rules: RuleSet, state_json: str | None, now_ms: int) -> dict[str, Any]:
    """Tier, qualified tier, window totals, progress to the next tier, review date, benefits."""

def simulate(rules: RuleSet, bodies: list[bytes]) -> dict[str, Any]:
    """Replays payment/refund bodies (oldest first) through `rules` from empty member states:
    events, refused, points issued and clawed back, points by BU and format, campaigns,
    upgrades, final tiers, cost_fen_by_bu (what the issuing BUs pay the pool) and
    points_by_member."""

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
    rules: RuleSet, rows_json: str, now_ms: int, snapshot: str | None = None
) -> tuple[str, int, list[tuple[str, str, int, int, str | None]], int | None, int | None]:
    """A member's state rebuilt from their ledger rows (JSON array, in applied order):
    (state JSON, balance, event records, tier review_at_ms, next wallet check ms); a record
    is (event_id, kind, amount_fen, points, the string Redis keeps for a payment or refund,
    or None for the other kinds). `snapshot`: the state the member's last write left (the
    member_states table), restored as it is (InvalidEvent if it is not a member state)."""

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

def next_wallet_check_ms(rules: RuleSet, state_json: str | None) -> int | None:
    """When the state next needs the scheduled wallet check (None: never)."""

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
    sv_topup, sv_pay, sv_refund, mall_exchange, mall_order, receipt_submit (op_id: the
    receipt's id) or receipt_review, event_signup, event_cancel, event_promote,
    event_checkin or event_close; `op_id` is its idempotency key.

    context_json: {"draw": int in [0, 1000000) (games), "spent": {budget id: units taken},
    "original": {"amount_fen", "refunded_fen", "bu_id", "merchant_id", "category"} (a
    stored-value refund's payment)}. Raises InvalidEventError for a bad request and
    RejectedEventError when the rules or the state refuse it (insufficient points or
    stored value, a daily limit, a closed game...), naming the field and the reason.
    """

def engagement_view(rules: RuleSet, state_json: str | None, now_ms: int) -> str:
    """Plays today per game, cards held, sign-in plans, pending exchanges, stored value,
    profile fields and rewards, referrals (JSON)."""

def record_fields(value: str | None) -> dict[str, str]:
    """A stored event record's fields by name (the layout is spelled in record.rs only); {}
    for none; an operation's JSON record gives kind "json" and its text under "json".
    Raises CorruptStateError for a record the core cannot read."""
