"""Operators' accounts, roles and sessions (streams/operators.py), and the route table: every
/v1/admin route and method has an access rule, so a new endpoint cannot skip the check."""

from __future__ import annotations

import time

import orjson
import pytest
from cryptography.fernet import Fernet

from streams import operators as ops


def admin_routes() -> set[tuple[str, str]]:
    """(method, route) of every /v1/admin view the service registers."""
    import streams.http  # noqa: F401  (registers every view)
    from streams.app import app

    out = set()
    for resource in app.web.web_app.router.resources():  # type: ignore[attr-defined]
        if resource.canonical.startswith("/v1/admin/"):
            out |= {(route.method, resource.canonical) for route in resource if route.method != "HEAD"}
    return out


def test_every_admin_route_has_an_access_rule_and_every_rule_a_route() -> None:
    routes = admin_routes()
    assert len(routes) >= 25
    assert routes - set(ops.POLICY) == set(), "routes without an access rule (streams/operators.py POLICY)"
    assert set(ops.POLICY) - routes == set(), "access rules of routes that do not exist"


def test_roles_grant_only_known_permissions_and_the_auditor_changes_nothing() -> None:
    assert set(ops.GRANTS) == set(ops.ROLES)
    for role, grants in ops.GRANTS.items():
        assert grants <= set(ops.PERMISSIONS), role
    changing = {p for (m, route), p in ops.POLICY.items() if m == "POST" and route not in ops.READ_ONLY_POSTS}
    assert changing and not (changing & ops.GRANTS["auditor"])
    assert "audit.read" in ops.GRANTS["auditor"]
    assert not ({"rules.write", "rules.read", "operations"} & ops.GRANTS["customer_service"])
    assert ops.GRANTS["merchant_staff"] == {"session", "settlement.read", "coupons.redeem"}
    assert not ({"members.erase", "members.unmerge"} & ops.GRANTS["customer_service"])
    assert ops.Operator("x", "group_admin", disabled=True).allows("session") is False


def test_password_hash_is_argon2id_and_checks_constant_shape() -> None:
    h = ops.hash_password("correct horse battery")
    assert h.startswith("$argon2id$") and "correct" not in h
    assert ops.password_matches(h, "correct horse battery")
    assert not ops.password_matches(h, "correct horse batterY")
    assert not ops.password_matches("", "anything at all")
    assert not ops.password_matches("not-a-hash", "anything at all")
    with pytest.raises(ops.OperatorInputError, match="12 to 256"):
        ops.hash_password("short")


def test_new_operator_checks_login_role_and_scope() -> None:
    op = ops.new_operator("cs-li", "customer_service", password="a long password!", now_ms=1)
    assert op.scope == "group" and "password_hash" not in op.public()
    assert "$argon2id$" not in orjson.dumps(op.public()).decode()
    assert ops.Operator.from_json(op.to_json()) == op
    bad = [
        (("X", "auditor"), "login"),
        (("ok-login", "automation"), "role"),
        (("ok-login", "boss"), "role"),
        (("ok-login", "bu_operator"), "bu"),
        (("ok-login", "merchant_staff"), "merchant"),
        (("ok-login", "auditor", "sh-mall"), "bu"),
    ]
    for args, field in bad:
        with pytest.raises(ops.OperatorInputError) as exc:
            ops.new_operator(*args, password="a long password!", now_ms=1)
        assert exc.value.field == field, args
    bu = ops.new_operator("bu-zhang", "bu_operator", "sh-mall", password="a long password!", now_ms=1)
    assert bu.scope == "bu:sh-mall"
    assert ops.with_password(bu, "another long one", 2).epoch == bu.epoch + 1
    assert ops.disabled(bu, 2).epoch == bu.epoch + 1 and not ops.disabled(bu, 2).allows("session")


def test_session_cookie_is_sealed_fresh_each_login_and_expires() -> None:
    key = ops.new_session_key()
    codec = ops.SessionCodec(key, max_age_s=60)
    op = ops.Operator("cs-li", "customer_service")
    t1, s1 = codec.issue(op)
    t2, s2 = codec.issue(op)
    assert codec.read(t1) == s1 and s1.sid != s2.sid and s1.csrf != s2.csrf and t1 != t2
    assert b"cs-li" not in t1.encode() and s1.csrf not in t1, "encrypted, not only signed"
    assert codec.read(t1[:-4] + "AAAA") is None
    assert codec.read("") is None and codec.read("x" * 5000) is None
    assert ops.SessionCodec(ops.new_session_key(), 60).read(t1) is None, "another key's cookie"
    old = Fernet(key.encode()).encrypt_at_time(orjson.dumps(s1.__dict__), int(time.time()) - 120).decode()
    assert codec.read(old) is None, "past its life"
    with pytest.raises(ValueError, match="Fernet key"):
        ops.SessionCodec("not a key", 60)
