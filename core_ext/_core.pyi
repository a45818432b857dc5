"""Type stubs of the Rust extension `core_ext._core` (the loyalty engine's pure core)."""

from typing import Literal, final

__all__ = [
    "InvalidEventError",
    "LoyaltyCoreError",
    "PaymentBatch",
    "RejectedEventError",
    "RuleSet",
    "RulesError",
    "__version__",
    "accrue_batch",
    "validate_payment",
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
    """A validated, compiled earning rule set."""

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
        """The tier of a member who has none set (the first one)."""
    @property
    def business_units(self) -> list[tuple[str, str]]:
        """(business unit id, format), sorted."""

@final
class PaymentBatch:
    """A batch of raw event bodies, decoded and validated once (GIL released)."""

    @staticmethod
    def decode(bodies: list[bytes]) -> PaymentBatch: ...
    def __len__(self) -> int: ...
    def keys(self) -> list[tuple[str | None, str | None, str | None]]:
        """Per event: (event_id, member_id, refund_of); all None for an invalid body."""

def validate_payment(body: bytes) -> tuple[str, str, Literal["payment", "refund"]]:
    """Validates one raw body; returns (event_id, member_id, type) or raises InvalidEventError."""

_OutcomeTuple = tuple[
    Literal["apply", "duplicate", "rejected"],
    int,  # points delta (negative for a clawback)
    str | None,  # the ledger row, JSON (apply only)
    str | None,  # refund_of (refunds only)
    int,  # amount_fen of the event
    int,  # clawback points (refunds only)
    str | None,  # error field (rejected only)
    str | None,  # error reason (rejected only)
]

def accrue_batch(
    rules: RuleSet,
    batch: PaymentBatch,
    tiers: list[str | None],
    originals: list[tuple[int, int, int, int] | None],
    applied: list[bool],
    now_ms: int,
) -> list[_OutcomeTuple]:
    """Outcome of every event of `batch`, in order.

    tiers: each event's member tier as stored (None: default tier).
    originals: for refunds, the refunded payment as stored:
        (amount_fen, points, refunded_amount_fen, refunded_points).
    applied: the event id was applied by an earlier batch (outcome "duplicate").
    """
