"""The loyalty engine's Rust core (pure, batch-shaped), as a Python package."""

from core_ext._core import (
    InvalidEventError,
    LoyaltyCoreError,
    PaymentBatch,
    RejectedEventError,
    RulesError,
    RuleSet,
    __version__,
    accrue_batch,
    validate_payment,
)

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
