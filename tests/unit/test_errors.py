"""Every exception the engine defines is in one tree under core_ext.LoyaltyError, in the
branch that says what a caller does about it (docs in streams/errors.py)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import core_ext
import streams
from streams import errors


def _engine_exceptions() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    names = ["agents.accrual", "agents.ledger", "agents.notifier", "agents.parking", "core_ext"]
    names += [m.name for m in pkgutil.walk_packages(streams.__path__, "streams.")]
    for name in names:
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.split(".")[0] in ("streams", "agents", "core_ext"):
                found.append(obj)
    return found


def test_every_engine_exception_is_under_the_one_root() -> None:
    found = _engine_exceptions()
    assert len(found) >= 15, [e.__name__ for e in found]
    outside = [f"{e.__module__}.{e.__name__}" for e in found if not issubclass(e, core_ext.LoyaltyError)]
    assert outside == []


def test_each_branch_says_what_to_do() -> None:
    from agents.accrual import ConflictsPersist
    from streams.auth import AuthConfigError
    from streams.gateways import GatewayError
    from streams.gateways.mapping import GatewayConfigError
    from streams.inputs import BadInput
    from streams.settings import SettingsError
    from streams.signing import SignatureError
    from streams.sinks.ledger import LedgerNotHeld, LedgerUnavailable

    for config in (SettingsError, AuthConfigError, GatewayConfigError):
        assert issubclass(config, errors.ConfigError) and issubclass(config, ValueError)
    for refused in (BadInput, GatewayError):
        assert issubclass(refused, errors.InputError)
    assert issubclass(SignatureError, errors.SignatureError)
    for transient in (LedgerUnavailable, LedgerNotHeld, ConflictsPersist):
        assert issubclass(transient, errors.TransientError)
    assert not issubclass(errors.TransientError, ValueError), "a transient failure is never a ValueError"
    assert issubclass(core_ext.LoyaltyCoreError, errors.LoyaltyError) and issubclass(core_ext.LoyaltyCoreError,
                                                                                        ValueError)
