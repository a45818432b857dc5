"""Settings from the environment: worker roles and the consumer group they imply."""

from __future__ import annotations

import pytest

from streams.settings import ROLES, Settings, SettingsError


def test_default_worker_runs_every_role_in_the_app_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOYALTY_ROLES", raising=False)
    monkeypatch.setenv("LOYALTY_APP_ID", "mall")
    s = Settings.from_env()
    assert s.roles == ROLES and s.group_id == "mall" and s.holds_ledger


def test_roles_pick_the_group_and_who_holds_an_embedded_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOYALTY_APP_ID", "mall")
    monkeypatch.setenv("LOYALTY_ROLES", "parking, accrual")
    monkeypatch.setenv("LOYALTY_CLICKHOUSE_DSN", "chdb:///tmp/x")
    s = Settings.from_env()
    assert s.roles == {"accrual", "parking"} and s.group_id == "mall-accrual-parking"
    assert not s.holds_ledger
    monkeypatch.setenv("LOYALTY_CLICKHOUSE_DSN", "http://ch:8123")
    assert Settings.from_env().holds_ledger  # a shared server: any worker may query it
    monkeypatch.setenv("LOYALTY_ROLES", "ledger")
    assert Settings.from_env().group_id == "mall-ledger"


@pytest.mark.parametrize("raw", ["accrual,billing", ",", "ledgers"])
def test_unknown_roles_are_refused_by_name(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("LOYALTY_ROLES", raw)
    with pytest.raises(SettingsError, match="LOYALTY_ROLES takes"):
        Settings.from_env()


def test_an_ingress_process_runs_no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOYALTY_APP_ID", "mall")
    monkeypatch.setenv("LOYALTY_CLICKHOUSE_DSN", "chdb:///tmp/x")
    monkeypatch.setenv("LOYALTY_ROLES", "ingress")
    s = Settings.from_env()
    assert s.roles == {"ingress"} and s.group_id == "mall-ingress" and not s.holds_ledger
    monkeypatch.setenv("LOYALTY_ROLES", "ingress,accrual")  # every worker serves HTTP anyway
    assert Settings.from_env().roles == {"accrual"}


@pytest.mark.parametrize(("raw", "message"),
                         [("0", "must be >= 1"), ("1001", "must be <= 1000"), ("x", "must be an integer")])
def test_members_per_call_is_bounded(monkeypatch: pytest.MonkeyPatch, raw: str, message: str) -> None:
    monkeypatch.setenv("LOYALTY_REDIS_MEMBERS_PER_CALL", raw)
    with pytest.raises(SettingsError, match=f"LOYALTY_REDIS_MEMBERS_PER_CALL {message}"):
        Settings.from_env()
    monkeypatch.setenv("LOYALTY_REDIS_MEMBERS_PER_CALL", "1")
    assert Settings.from_env().redis_members_per_call == 1
