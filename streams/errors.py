"""The engine's exceptions: one tree under `core_ext.LoyaltyError`.

    LoyaltyError                       (core_ext; root of everything the engine raises)
    ├── LoyaltyCoreError (ValueError)  the Rust core: InvalidEventError, RulesError,
    │                                  RejectedEventError, CorruptStateError, InvalidArgumentError
    ├── ConfigError (ValueError)       settings, keys, gateway routes: SettingsError,
    │                                  AuthConfigError, GatewayConfigError
    ├── InputError (ValueError)        what a caller sent: BadInput, GatewayError
    ├── SignatureError                 a request not signed as agreed
    └── TransientError                 a backing service away or a member contended: retried,
                                       never dead-lettered (LedgerUnavailable, ConflictsPersist,
                                       LedgerNotHeld)

`except LoyaltyError` catches the engine's own failures and nothing else; the branches say
what a caller does about one: fix the configuration, answer 400, answer 401, or wait.
"""

from __future__ import annotations

from core_ext import LoyaltyError


class ConfigError(LoyaltyError, ValueError):
    """A setting, key or configuration file the engine cannot start with."""


class InputError(LoyaltyError, ValueError):
    """Input from a caller that is refused; `field` names what is wrong when known."""


class SignatureError(LoyaltyError):
    """A request whose signature, timestamp or nonce is not as agreed."""


class TransientError(LoyaltyError):
    """A failure that passes (a backing service away, a member contended): retried."""


__all__ = ["ConfigError", "InputError", "LoyaltyError", "SignatureError", "TransientError"]
