"""What a BU operator may change in the rules: only entries that belong to their business
unit alone (docs/back-office.md), and the version string. Everything else — formats, tiers,
caps, the wallet, group-wide campaigns, templates, triggers — needs a group admin.

An entry of a list of tables (campaigns, coupon templates, merchants, car parks...) belongs
to a BU when it names that BU alone (`bu = "<bu>"` or `bus = ["<bu>"]`). A change adds,
removes or edits such entries (matched by `id`, else by position); any other difference
between the texts is group-wide.
"""

from __future__ import annotations

import tomllib
from typing import Any


def _owner(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("bu"), str) and "bus" not in entry:
        return str(entry["bu"])
    bus = entry.get("bus")
    if isinstance(bus, list) and len(bus) == 1 and isinstance(bus[0], str) and "bu" not in entry:
        return bus[0]
    return None


def _keyed(items: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, item in enumerate(items):
        key = item.get("id") if isinstance(item, dict) and isinstance(item.get("id"), str) else None
        out[f"id={key}" if key is not None else f"#{i}"] = item
    return out


def changes_outside(old_text: str, new_text: str, bu: str) -> list[str]:
    """The changes from `old_text` to `new_text` that are not `bu`'s alone (empty: the
    change is within the BU's own entries)."""
    old, new = tomllib.loads(old_text), tomllib.loads(new_text)
    out: list[str] = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section), new.get(section)
        if a == b or section == "version":  # the version string names the text, whoever publishes it
            continue
        if isinstance(a, list | None) and isinstance(b, list | None) and all(
                isinstance(x, dict) for x in (a or []) + (b or [])):
            ka, kb = _keyed(a or []), _keyed(b or [])
            for key in sorted(set(ka) | set(kb)):
                before, after = ka.get(key), kb.get(key)
                if before == after:
                    continue
                owners = {_owner(x) for x in (before, after) if x is not None}
                if owners != {bu}:
                    out.append(f"{section}[{key}]")
            continue
        out.append(section)
    return out


#: A merchant's fields in the rules (docs/rules.md), and the integer ones.
MERCHANT_FIELDS = ("id", "bu", "category", "name", "points", "per_fen", "commission_bp", "commission_min_fen",
                   "max_payment_fen")
MERCHANT_INTS = frozenset({"points", "per_fen", "commission_bp", "commission_min_fen", "max_payment_fen"})


def merchants_of(text: str) -> list[dict[str, Any]]:
    return [{k: m.get(k) for k in MERCHANT_FIELDS} for m in tomllib.loads(text).get("merchants", [])]


def with_merchant(text: str, merchant: dict[str, Any]) -> str:
    """The rules text with this merchant added, or its entry replaced (matched by id), the
    rest of the text and its comments as they were. Fields left empty are left out. The
    result is for the rules checker to judge (ids, business unit, ranges)."""
    import tomlkit

    unknown = set(merchant) - set(MERCHANT_FIELDS)
    if unknown:
        raise ValueError(f"merchant: unknown fields {sorted(unknown)}")
    entry = tomlkit.table()
    for k in MERCHANT_FIELDS:
        v = merchant.get(k)
        if v is None or v == "":
            continue
        if k in MERCHANT_INTS:
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"merchant.{k}: an integer")
        elif not isinstance(v, str):
            raise ValueError(f"merchant.{k}: text")
        entry[k] = v
    if "id" not in entry:
        raise ValueError("merchant.id: required")
    doc = tomlkit.parse(text)
    merchants = doc.get("merchants")
    if merchants is None:
        merchants = tomlkit.aot()
        doc["merchants"] = merchants
    for i, m in enumerate(merchants):
        if m.get("id") == entry["id"]:
            merchants[i] = entry
            break
    else:
        merchants.append(entry)
    return tomlkit.dumps(doc)
