"""The loyalty engine's Rust core (pure, batch-shaped), as a Python package."""

from core_ext._core import (
    EventBatch,
    InvalidEventError,
    LoyaltyCoreError,
    RejectedEventError,
    RulesError,
    RuleSet,
    __version__,
    evaluate_batch,
    member_view,
    rebuild_member,
    redeem,
    reverse_redemption,
    simulate,
    validate_member_event,
    validate_payment,
)

__all__ = [
    "EventBatch",
    "InvalidEventError",
    "LoyaltyCoreError",
    "RejectedEventError",
    "RuleSet",
    "RulesError",
    "__version__",
    "evaluate_batch",
    "member_view",
    "rebuild_member",
    "redeem",
    "reverse_redemption",
    "simulate",
    "validate_member_event",
    "validate_payment",
]
