"""Who is calling: scoped credentials, member tokens, personal data kept out of stores and logs.

- Admin token (LOYALTY_ADMIN_TOKEN): operators; admin endpoints, and any member's data.
- POS keys (LOYALTY_POS_KEYS="till-01:secret,till-02:secret"): tills and merchant systems.
  Writes are signed with the key's secret and name it in X-Key-Id; reads send
  `Authorization: Bearer pos:<key id>:<secret>`.
- Member tokens (LOYALTY_MEMBER_TOKEN_SECRET): `m.<member id>.<expiry>.<hmac>`, issued by the
  member app's backend (`loyalty members token`); they read that one member's data only.
- Gateway callbacks keep their own secret (LOYALTY_CALLBACK_SECRET) and nothing else.

Every comparison of a secret is constant-time (hmac.compare_digest).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from streams.errors import ConfigError

KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Mainland mobile numbers: 11 digits starting 1[3-9]; also with +86 / 86 in front.
MOBILE = re.compile(r"(?<!\d)(?:\+?86[- ]?)?(1[3-9]\d)(\d{4})(\d{4})(?!\d)")
PSEUDONYM_PREFIX = "ph_"


class AuthConfigError(ConfigError):
    """A credential setting in the environment cannot be used."""


@dataclass(frozen=True)
class Principal:
    kind: str  # "admin" | "pos" | "member"
    id: str

    @property
    def client_key(self) -> str:
        """What rate limits count by."""
        return f"{self.kind}:{self.id}"

    def may_read(self, member_id: str) -> bool:
        return self.kind in ("admin", "pos") or self.id == member_id


def parse_pos_keys(raw: str) -> dict[str, str]:
    """`id:secret,id2:secret2` -> {id: secret}; refuses malformed entries by position."""
    keys: dict[str, str] = {}
    for n, item in enumerate((i.strip() for i in raw.split(",")), 1):
        if not item:
            continue
        key_id, sep, secret = item.partition(":")
        if not sep or not KEY_ID.fullmatch(key_id) or len(secret) < 16:
            raise AuthConfigError(f"LOYALTY_POS_KEYS entry {n}: expected <key id>:<secret of 16+ characters>")
        if key_id in keys:
            raise AuthConfigError(f"LOYALTY_POS_KEYS entry {n}: key id {key_id} given twice")
        keys[key_id] = secret
    return keys


def _token_mac(secret: str, member_id: str, expires: int) -> str:
    return hmac.new(secret.encode(), f"member.{member_id}.{expires}".encode(), hashlib.sha256).hexdigest()


def member_token(secret: str, member_id: str, ttl_s: int = 3600, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + ttl_s)
    return f"m.{member_id}.{expires}.{_token_mac(secret, member_id, expires)}"


def member_of_token(secret: str, token: str, now: float | None = None) -> str | None:
    """The member a token was issued to, or None if it is malformed, forged or expired."""
    if not secret or not token.startswith("m."):
        return None
    parts = token[2:].rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    member_id, expires, mac = parts[0], int(parts[1]), parts[2]
    if not hmac.compare_digest(_token_mac(secret, member_id, expires).encode(), mac.encode(errors="replace")):
        return None
    if expires < (time.time() if now is None else now):
        return None
    return member_id


def bearer_principal(authorization: str, admin_token: str, pos_keys: dict[str, str],
                     member_secret: str) -> Principal | None:
    """The principal an `Authorization: Bearer ...` header proves, or None."""
    if not authorization.startswith("Bearer "):
        return None
    token = authorization.removeprefix("Bearer ").strip()
    if not token:
        return None
    if admin_token and hmac.compare_digest(token.encode(errors="replace"), admin_token.encode()):
        return Principal("admin", "admin")
    if token.startswith("pos:"):
        key_id, _, secret = token[4:].partition(":")
        expected = pos_keys.get(key_id)
        # Compare against something of the same kind even for an unknown key id.
        if hmac.compare_digest((expected or "\0" * 32).encode(), secret.encode(errors="replace")) and expected:
            return Principal("pos", key_id)
        return None
    member_id = member_of_token(member_secret, token)
    return Principal("member", member_id) if member_id is not None else None


def pseudonym(key: str, phone: str) -> str:
    """A stable keyed hash of a phone number: the same number always maps to the same id
    (so binding and guest credit still work), the number cannot be read back."""
    if phone.startswith(PSEUDONYM_PREFIX):
        return phone
    digits = re.sub(r"\D", "", phone)
    if len(digits) == 13 and digits.startswith("86"):
        digits = digits[2:]
    return PSEUDONYM_PREFIX + hmac.new(key.encode(), digits.encode(), hashlib.sha256).hexdigest()[:32]


def mask_phones(text: str) -> str:
    """138****5678 for every mobile number in a text (logs, dead letters)."""
    return MOBILE.sub(lambda m: f"{m.group(1)}****{m.group(3)}", text)


MOBILE_BYTES = re.compile(rb"(?<!\d)(?:\+?86[- ]?)?(1[3-9]\d)(\d{4})(\d{4})(?!\d)")


def mask_phone_bytes(body: bytes) -> bytes:
    """mask_phones for raw bytes (invalid UTF-8 stays as it was)."""
    return MOBILE_BYTES.sub(lambda m: m.group(1) + b"****" + m.group(3), body)


def _pseudonymise_ids(ids: Any, key: str) -> bool:
    changed = False
    for ext in ids if isinstance(ids, list) else [ids]:
        if isinstance(ext, dict) and ext.get("kind") == "phone" and isinstance(ext.get("id"), str):
            new = pseudonym(key, ext["id"])
            changed |= new != ext["id"]
            ext["id"] = new
    return changed


def may_name_phone(body: bytes) -> bool:
    """False when the raw text cannot name a phone: no `"phone"` and no escape (`\\u0068`
    for an `h` would hide one from a search of the raw text)."""
    return b'"phone"' in body or b"\\u" in body


def names_phone(body: bytes) -> bool:
    """Whether the decoded body names a phone as its payer or one of its external ids."""
    if not may_name_phone(body):
        return False
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(doc, dict):
        return False
    for field in ("payer", "external_ids"):
        ids = doc.get(field)
        for ext in ids if isinstance(ids, list) else [ids]:
            if isinstance(ext, dict) and ext.get("kind") == "phone":
                return True
    return False


def pseudonymise_body(body: bytes, key: str) -> bytes:
    """The body with every phone external id (payer, external_ids) replaced by its pseudonym;
    unchanged (the same bytes) when it names no phone."""
    if not may_name_phone(body):
        return body
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(doc, dict):
        return body
    changed = False
    for field in ("payer", "external_ids"):
        if field in doc:
            changed |= _pseudonymise_ids(doc[field], key)
    return orjson.dumps(doc) if changed else body


class MaskingFilter(logging.Filter):
    """Masks mobile numbers in every record that passes (installed on the root handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose args do not fit its format: leave it to the handler
            return True
        masked = mask_phones(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True


def install_log_masking() -> None:
    """Wraps the log record factory so every record, whatever handler Faust sets up later,
    carries masked phone numbers."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_masks_phones", False):
        return
    filt = MaskingFilter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        filt.filter(record)
        return record

    factory._masks_phones = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def redact_url(url: str) -> str:
    """A DSN without its password (redis://:secret@host -> redis://***@host)."""
    return re.sub(r"(//)[^/@]*@", r"\1***@", url)
