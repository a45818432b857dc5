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
                         [("0", "Input should be greater than or equal to 1, got '0'"),
                          ("1001", "Input should be less than or equal to 1000, got '1001'"),
                          ("x", "Input should be a valid integer, unable to parse string as an integer, got 'x'")])
def test_members_per_call_is_bounded(monkeypatch: pytest.MonkeyPatch, raw: str, message: str) -> None:
    monkeypatch.setenv("LOYALTY_REDIS_MEMBERS_PER_CALL", raw)
    with pytest.raises(SettingsError) as info:
        Settings.from_env()
    assert str(info.value) == f"LOYALTY_REDIS_MEMBERS_PER_CALL {message}"
    monkeypatch.setenv("LOYALTY_REDIS_MEMBERS_PER_CALL", "1")
    assert Settings.from_env().redis_members_per_call == 1


def test_secrets_never_print_and_are_read_on_purpose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOYALTY_ADMIN_TOKEN", "very-secret-admin")
    monkeypatch.setenv("LOYALTY_PII_KEY", "very-secret-pii")
    s = Settings.from_env()
    for shown in (repr(s), str(s), s.model_dump_json()):
        assert "very-secret" not in shown
    assert s.admin_token.get_secret_value() == "very-secret-admin"
    assert s.pii_key.get_secret_value() == "very-secret-pii"


def test_variables_named_apart_from_their_field_and_the_service_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOYALTY_SIGNATURE_MAX_AGE", "120")
    monkeypatch.setenv("LOYALTY_BATCH_WITHIN", "0.2")
    monkeypatch.setenv("LOYALTY_RULES", "/tmp/other.toml")
    monkeypatch.setenv("LOYALTY_REDIS_PORT", "6399")
    monkeypatch.delenv("LOYALTY_REDIS_URL", raising=False)
    monkeypatch.setenv("LOYALTY_KAFKA_PORT", "")  # empty: the default
    monkeypatch.delenv("LOYALTY_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("LOYALTY_KAFKA_COMPRESSION", "")  # empty here means: no compression
    s = Settings.from_env()
    assert (s.signature_max_age_s, s.batch_within_s, str(s.rules_path)) == (120, 0.2, "/tmp/other.toml")
    assert s.redis_url == "redis://127.0.0.1:6399/0" and s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.kafka_compression == ""
    monkeypatch.setenv("LOYALTY_REDIS_PORT", "63a")
    with pytest.raises(SettingsError, match="LOYALTY_REDIS_PORT must be a port"):
        Settings.from_env()


def test_every_wrong_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOYALTY_WEB_PORT", "70000")
    monkeypatch.setenv("LOYALTY_PUSH_TIMEOUT", "-1")
    with pytest.raises(SettingsError) as info:
        Settings.from_env()
    assert "LOYALTY_WEB_PORT Input should be less than or equal to 65535, got '70000'" in str(info.value)
    assert "LOYALTY_PUSH_TIMEOUT Input should be greater than 0, got '-1'" in str(info.value)
