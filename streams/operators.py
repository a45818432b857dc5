"""The back office's operators: accounts, roles and what each role may do, password hashes
and the console's session cookie (docs/back-office.md). Pure: no I/O; the accounts live in
Redis (streams/state/operators.py) with their durable copy in ClickHouse's `bindings`.

Roles:
- `group_admin`: everything, for the whole group; manages operators.
- `bu_operator`: members who visited their business unit, their BU's statements.
- `merchant_staff`: their merchant's statements and coupon redemptions.
- `customer_service`: member look-up and member actions, no rules, no figures.
- `auditor`: reads everything, the audit trail included; changes nothing.
- `automation`: the admin token (LOYALTY_ADMIN_TOKEN), for scripts and the CLI.

Every `/v1/admin/...` route names the permission it needs in POLICY (checked by the
console's middleware before the view runs; a route missing from it is refused, and a unit
test fails). Scope (a BU, a merchant) is checked by the view against the resource asked for.
"""

from __future__ import annotations

import binascii
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.fernet import Fernet, InvalidToken

from streams.errors import InputError

ROLES = ("group_admin", "bu_operator", "merchant_staff", "customer_service", "auditor", "automation")
LOGIN = re.compile(r"^[a-z0-9][a-z0-9_.-]{2,31}$")
MIN_PASSWORD = 12

#: What each permission lets an operator do.
PERMISSIONS = {
    "session": "see who they are (every operator)",
    "figures.read": "group-wide figures: KPIs, totals, liability, reconcile, held refunds",
    "settlement.read": "settlement statements (a BU operator: their BU; merchant staff: their merchant)",
    "members.read": "member look-up and the member page (a BU operator: members who visited their BU)",
    "members.write": "member actions: adjustments, tier overrides (audited)",
    "members.approve": "approve or reject another operator's adjustment above the threshold",
    "members.privacy": "personal data requests: export a member's data",
    "members.merge": "merge two accounts of one person",
    "members.unmerge": "undo a merge within LOYALTY_MERGE_UNDO_DAYS",
    "members.erase": "erase a member (PIPL): cannot be undone",
    "rules.read": "rules in force and their simulation",
    "rules.write": "publish or roll back rules (a BU operator: their BU's own entries only)",
    "operations": "rebuild, repair, backup, segments refresh",
    "audit.read": "the audit trail",
    "operators.manage": "add, disable and reset operators",
    "audiences.send": "define audiences and send them a coupon",
    "audiences.read": "see audience sends, scheduled campaigns and their runs, and what they issued",
    "coupons.redeem": "redeem a member's coupon at a merchant (merchant staff: their own)",
    "receipts.review": "the receipts waiting for review: approve or reject (the member is told why)",
}

_ALL = frozenset(PERMISSIONS)
_READ = frozenset({"session", "figures.read", "settlement.read", "members.read", "rules.read", "audit.read",
                   "audiences.read"})
GRANTS: dict[str, frozenset[str]] = {
    "automation": _ALL,
    "group_admin": _ALL,
    "bu_operator": frozenset({"session", "settlement.read", "members.read", "members.write", "members.approve",
                              "rules.read", "rules.write"}),
    "merchant_staff": frozenset({"session", "settlement.read", "coupons.redeem"}),
    "customer_service": frozenset({"session", "members.read", "members.write", "members.approve",
                                   "members.privacy", "members.merge", "receipts.review"}),
    "auditor": _READ,
}

#: (method, route) -> the permission it needs. Every route under /v1/admin is here.
POLICY: dict[tuple[str, str], str] = {
    ("GET", "/v1/admin/session"): "session",
    ("GET", "/v1/admin/coupons/totals"): "figures.read",
    ("GET", "/v1/admin/kpis"): "figures.read",
    ("GET", "/v1/admin/liability"): "figures.read",
    ("GET", "/v1/admin/ledger/totals"): "figures.read",
    ("GET", "/v1/admin/reconcile"): "figures.read",
    ("GET", "/v1/admin/held"): "figures.read",
    ("GET", "/v1/admin/stored-value/reconcile"): "figures.read",
    ("GET", "/v1/admin/games/{game}/draws"): "figures.read",
    ("GET", "/v1/admin/settlement/events/{event_id}"): "figures.read",
    ("GET", "/v1/admin/settlement/statement"): "settlement.read",
    ("POST", "/v1/admin/segments/refresh"): "operations",
    ("POST", "/v1/admin/reconcile/repair"): "operations",
    ("POST", "/v1/admin/backup"): "operations",
    ("POST", "/v1/admin/rebuild"): "operations",
    ("GET", "/v1/admin/members/search"): "members.read",
    ("GET", "/v1/admin/members/{member_id}/overview"): "members.read",
    ("POST", "/v1/admin/members/{member_id}/tier"): "members.write",
    ("POST", "/v1/admin/members/{member_id}/adjustments"): "members.write",
    ("POST", "/v1/admin/members/{member_id}/unbind"): "members.write",
    ("POST", "/v1/admin/members/{member_id}/export"): "members.privacy",
    ("POST", "/v1/admin/members/{member_id}/erase"): "members.erase",
    ("POST", "/v1/admin/members/{member_id}/holds/{hold_id}/cancel"): "members.write",
    ("POST", "/v1/admin/members/{member_id}/coupons/{coupon_id}/resend"): "members.write",
    ("POST", "/v1/admin/members/{member_id}/merge"): "members.merge",
    ("GET", "/v1/admin/merges/{merge_id}"): "members.read",
    ("POST", "/v1/admin/merges/{merge_id}/undo"): "members.unmerge",
    ("GET", "/v1/admin/approvals"): "members.read",
    ("POST", "/v1/admin/coupons/redeem"): "coupons.redeem",
    ("GET", "/v1/admin/receipts"): "receipts.review",
    ("GET", "/v1/admin/receipts/images/{image}"): "receipts.review",
    ("POST", "/v1/admin/receipts/{receipt_id}/{decision}"): "receipts.review",
    ("GET", "/v1/admin/coupons/redemptions"): "settlement.read",
    ("POST", "/v1/admin/approvals/{approval_id}/approve"): "members.approve",
    ("POST", "/v1/admin/approvals/{approval_id}/reject"): "members.approve",
    ("POST", "/v1/admin/rules/simulate"): "rules.read",
    ("POST", "/v1/admin/rules/reload"): "operations",
    ("GET", "/v1/admin/rules"): "rules.read",
    ("POST", "/v1/admin/rules/check"): "rules.read",
    ("POST", "/v1/admin/rules/publish"): "rules.write",
    ("POST", "/v1/admin/rules/rollback"): "rules.write",
    ("GET", "/v1/admin/merchants"): "rules.read",
    ("POST", "/v1/admin/merchants"): "rules.write",
    ("GET", "/v1/admin/audit"): "audit.read",
    ("POST", "/v1/admin/audiences/preview"): "audiences.send",
    ("POST", "/v1/admin/audiences/send"): "audiences.send",
    ("GET", "/v1/admin/audiences/sends/{send_id}"): "audiences.read",
    ("GET", "/v1/admin/campaigns"): "audiences.read",
    ("GET", "/v1/admin/campaigns/{campaign}/preview"): "audiences.read",
    ("GET", "/v1/admin/campaigns/{campaign}/runs/{run}"): "audiences.read",
    ("GET", "/v1/admin/operators"): "audit.read",
    ("POST", "/v1/admin/operators"): "operators.manage",
    ("POST", "/v1/admin/operators/{login}/disable"): "operators.manage",
    ("POST", "/v1/admin/operators/{login}/reset-password"): "operators.manage",
}

#: Requests that change nothing although they are POSTs (not written to the audit trail).
READ_ONLY_POSTS = frozenset({"/v1/admin/rules/simulate", "/v1/admin/rules/check", "/v1/admin/audiences/preview"})


class OperatorInputError(InputError):
    """An operator account request that cannot be taken (the field it is about named)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Operator:
    """An operator account as stored (the hash is never shown). `epoch` grows when the
    password is reset or the account disabled: sessions issued before are refused."""

    login: str
    role: str
    bu: str = ""
    merchant: str = ""
    password_hash: str = field(default="", repr=False)
    disabled: bool = False
    epoch: int = 1
    created_at_ms: int = 0
    updated_at_ms: int = 0

    def allows(self, permission: str) -> bool:
        return not self.disabled and permission in GRANTS.get(self.role, frozenset())

    @property
    def scope(self) -> str:
        """What the account is limited to, as the audit trail writes it."""
        return f"bu:{self.bu}" if self.bu else f"merchant:{self.merchant}" if self.merchant else "group"

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("password_hash")
        return d

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, raw: str | bytes) -> Operator:
        return cls(**orjson.loads(raw))


AUTOMATION = Operator(login="admin-token", role="automation")

_hasher = PasswordHasher()  # argon2id with the library's current parameters


def check_password(password: object) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD or len(password) > 256:
        raise OperatorInputError(f"password: {MIN_PASSWORD} to 256 characters", "password")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(check_password(password))


def password_matches(stored_hash: str, password: str) -> bool:
    """Constant-time verification (argon2); a malformed or empty hash never matches."""
    if not stored_hash:
        # Same work as a real check, so a login that does not exist takes as long.
        _hasher.hash("not-a-password-of-anyone")
        return False
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_operator(login: object, role: object, bu: object = "", merchant: object = "", *,
                 password: str, now_ms: int) -> Operator:
    """A new account, checked: login, role, the scope the role needs, the password."""
    if not isinstance(login, str) or not LOGIN.fullmatch(login):
        raise OperatorInputError("login: 3-32 of a-z 0-9 _ . - (starting with a letter or digit)", "login")
    if role not in ROLES or role == "automation":
        raise OperatorInputError(f"role: one of {', '.join(r for r in ROLES if r != 'automation')}", "role")
    bu = bu or ""
    merchant = merchant or ""
    if not isinstance(bu, str) or not isinstance(merchant, str):
        raise OperatorInputError("bu / merchant: text", "bu")
    if role == "bu_operator" and not bu:
        raise OperatorInputError("bu: a BU operator needs their business unit", "bu")
    if role == "merchant_staff" and not merchant:
        raise OperatorInputError("merchant: merchant staff need their merchant", "merchant")
    if role not in ("bu_operator",) and bu:
        raise OperatorInputError(f"bu: only a BU operator has one (not {role})", "bu")
    if role not in ("merchant_staff",) and merchant:
        raise OperatorInputError(f"merchant: only merchant staff have one (not {role})", "merchant")
    return Operator(login=login, role=str(role), bu=bu, merchant=merchant, password_hash=hash_password(password),
                    created_at_ms=now_ms, updated_at_ms=now_ms)


def with_password(op: Operator, password: str, now_ms: int) -> Operator:
    return replace(op, password_hash=hash_password(password), epoch=op.epoch + 1, updated_at_ms=now_ms)


def disabled(op: Operator, now_ms: int) -> Operator:
    return replace(op, disabled=True, epoch=op.epoch + 1, updated_at_ms=now_ms)


def new_session_key() -> str:
    return Fernet.generate_key().decode()


@dataclass(frozen=True)
class Session:
    """What the console's cookie carries (encrypted and signed with Fernet): who, the
    account's epoch when it was issued, a session id (a logout revokes it) and the CSRF
    token the pages send back on every change."""

    login: str
    epoch: int
    sid: str
    csrf: str
    issued_ms: int


class SessionCodec:
    def __init__(self, key: str, max_age_s: int) -> None:
        try:
            self._fernet = Fernet(key.encode())
        except (ValueError, TypeError) as exc:
            raise ValueError("LOYALTY_CONSOLE_SESSION_KEY: a Fernet key (32 url-safe base64 bytes; "
                             "`loyalty operators session-key` makes one)") from exc
        self.max_age_s = max_age_s

    def issue(self, op: Operator, now_ms: int | None = None) -> tuple[str, Session]:
        """A fresh session (new id and CSRF token, whatever cookie came with the login)."""
        s = Session(login=op.login, epoch=op.epoch, sid=secrets.token_urlsafe(18),
                    csrf=secrets.token_urlsafe(24), issued_ms=now_ms or int(time.time() * 1000))
        return self._fernet.encrypt(orjson.dumps(asdict(s))).decode(), s

    def read(self, token: str) -> Session | None:
        """The session a cookie carries, or None (forged, altered, expired or not one)."""
        if not token or len(token) > 4096:
            return None
        try:
            raw = self._fernet.decrypt(token.encode(), ttl=self.max_age_s)
            return Session(**orjson.loads(raw))
        except (InvalidToken, ValueError, TypeError, orjson.JSONDecodeError, binascii.Error):
            return None
