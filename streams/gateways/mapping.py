"""Which business unit, merchant and category a gateway's payment belongs to.

rules/gateways.toml (LOYALTY_GATEWAYS) lists routes: a WeChat Pay merchant number
(and sub-merchant in partner mode) or an Alipay app id (and seller id) maps to a BU,
a merchant and a category. The payment's own `attach` (WeChat) or `passback_params`
(Alipay), set by the merchant's till when it created the order, may name them
instead, as a query string: `bu_id=sh-mall&merchant_id=sh-mall-shop-02&category=food`.
The same query string may name the points-mall order whose cash part the payment pays
(积分换购): `mall_order=<order id>` (docs/points-mall.md).
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from streams.errors import ConfigError
from streams.gateways import GatewayError
from streams.inputs import is_valid_id

log = logging.getLogger(__name__)


class GatewayConfigError(ConfigError):
    """rules/gateways.toml cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class Route:
    bu_id: str
    merchant_id: str
    category: str


@dataclass(frozen=True)
class GatewayRoutes:
    """The routes of one gateway: (account, sub account or "") -> Route."""

    routes: dict[tuple[str, str], Route]
    overrides: bool  # attach / passback_params may name the route
    #: WeChat Pay smart business circle (智慧商圈): the mall's shops by `shop_number`.
    circle_shops: dict[str, Route] = field(default_factory=dict)

    def route(self, account: str, sub_account: str, override: str | None) -> Route:
        """The route of a payment; GatewayError (retry: the config may be fixed) if none."""
        if override and self.overrides:
            fields = dict(parse_qsl(override, keep_blank_values=False))
            if {"bu_id", "merchant_id", "category"} <= fields.keys():
                r = Route(fields["bu_id"], fields["merchant_id"], fields["category"])
                for name, value in vars(r).items():
                    if not is_valid_id(value):
                        raise GatewayError("attach", f"{name} {value!r} is not a valid id")
                return r
        found = self.routes.get((account, sub_account)) or self.routes.get((account, ""))
        if found is None:
            raise GatewayError(
                "route",
                f"no route for merchant {account!r}" + (f" / {sub_account!r}" if sub_account else "")
                + " in the gateways file, and no bu_id/merchant_id/category in the order",
                status=503,  # a retry the gateways accept, not an internal error (docs/gateways.md)
                unrouted=account,
            )
        return found

    def circle_shop(self, shop_number: str) -> Route:
        """The route of a business-circle payment's shop; GatewayError (retry) if none."""
        found = self.circle_shops.get(shop_number)
        if found is None:
            raise GatewayError("shop_number", f"no [[wechatpay.circle_shops]] entry for shop {shop_number!r} in the "
                               "gateways file", status=503, unrouted=f"shop:{shop_number}")
        return found


def mall_order(override: str | None) -> dict[str, str]:
    """`{"mall_order": id}` when the order's attach / passback_params names a points-mall
    order (the cash part of a points + cash exchange), else {}."""
    if not override:
        return {}
    order = dict(parse_qsl(override, keep_blank_values=False)).get("mall_order")
    if order is None:
        return {}
    if not is_valid_id(order):
        raise GatewayError("attach", f"mall_order {order!r} is not a valid id")
    return {"mall_order": order}


@dataclass(frozen=True)
class GatewayConfig:
    wechatpay: GatewayRoutes
    alipay: GatewayRoutes
    path: str

    @classmethod
    def empty(cls) -> GatewayConfig:
        return cls(GatewayRoutes({}, True), GatewayRoutes({}, True), "<none>")


_KEYS = {"wechatpay": ("mchid", "sub_mchid"), "alipay": ("app_id", "seller_id")}


def _place_usable(at: str, entry: dict[str, Any], bus: set[str] | None, lenient: bool) -> bool:
    """Checks the place an entry routes to (BU, merchant, category ids; the BU one of the
    rules'). An unknown BU refuses the file, or, lenient, is logged and the entry left out:
    a worker keeps running and that entry's payments are refused (and retried by the
    gateway) until the rules or the routes are fixed."""
    for name in ("bu_id", "merchant_id", "category"):
        if not is_valid_id(entry[name]):
            raise GatewayConfigError(f"{at}.{name}: {entry[name]!r} is not a valid id (letters, digits, _ - . : @)")
    if bus is not None and entry["bu_id"] not in bus:
        problem = f"{at}.bu_id: {entry['bu_id']!r} is not a business unit of the rules"
        if not lenient:
            raise GatewayConfigError(problem)
        log.error("%s; its payments will be refused until fixed", problem)
        return False
    return True


def _routes(where: str, section: Any, account_key: str, sub_key: str, bus: set[str] | None,
            lenient: bool) -> GatewayRoutes:
    if not isinstance(section, dict):
        raise GatewayConfigError(f"{where}: must be a table")
    sections = {"routes", "overrides", "circle_shops"} if account_key == "mchid" else {"routes", "overrides"}
    unknown = set(section) - sections
    if unknown:
        raise GatewayConfigError(f"{where}: unknown field(s) {sorted(unknown)} ({', '.join(sorted(sections))})")
    overrides = section.get("overrides", True)
    if not isinstance(overrides, bool):
        raise GatewayConfigError(f"{where}.overrides: must be true or false")
    routes: dict[tuple[str, str], Route] = {}
    for i, entry in enumerate(section.get("routes", [])):
        at = f"{where}.routes[{i}]"
        if not isinstance(entry, dict):
            raise GatewayConfigError(f"{at}: must be a table")
        allowed = {account_key, sub_key, "bu_id", "merchant_id", "category"}
        if set(entry) - allowed:
            extra = sorted(set(entry) - allowed)
            raise GatewayConfigError(f"{at}: unknown field(s) {extra} ({', '.join(sorted(allowed))})")
        for name in (account_key, "bu_id", "merchant_id", "category"):
            if not isinstance(entry.get(name), str) or not entry[name]:
                raise GatewayConfigError(f"{at}.{name}: required (a string)")
        sub = entry.get(sub_key, "")
        if not isinstance(sub, str):
            raise GatewayConfigError(f"{at}.{sub_key}: must be a string")
        if not _place_usable(at, entry, bus, lenient):
            continue
        key = (entry[account_key], sub)
        if key in routes:
            raise GatewayConfigError(f"{at}: a second route for {account_key} {key[0]!r} {sub_key} {sub!r}")
        routes[key] = Route(entry["bu_id"], entry["merchant_id"], entry["category"])
    return GatewayRoutes(routes, overrides, _circle_shops(where, section.get("circle_shops", []), bus, lenient))


def _circle_shops(where: str, entries: Any, bus: set[str] | None, lenient: bool) -> dict[str, Route]:
    """`[[wechatpay.circle_shops]]`: shop_number -> BU, merchant and category."""
    if not isinstance(entries, list):
        raise GatewayConfigError(f"{where}.circle_shops: must be an array of tables ([[wechatpay.circle_shops]])")
    shops: dict[str, Route] = {}
    allowed = {"shop_number", "bu_id", "merchant_id", "category"}
    for i, entry in enumerate(entries):
        at = f"{where}.circle_shops[{i}]"
        if not isinstance(entry, dict):
            raise GatewayConfigError(f"{at}: must be a table")
        if set(entry) - allowed:
            raise GatewayConfigError(f"{at}: unknown field(s) {sorted(set(entry) - allowed)} "
                                     f"({', '.join(sorted(allowed))})")
        for name in sorted(allowed):
            if not isinstance(entry.get(name), str) or not entry[name]:
                raise GatewayConfigError(f"{at}.{name}: required (a string)")
        if not _place_usable(at, entry, bus, lenient):
            continue
        if entry["shop_number"] in shops:
            raise GatewayConfigError(f"{at}: a second entry for shop_number {entry['shop_number']!r}")
        shops[entry["shop_number"]] = Route(entry["bu_id"], entry["merchant_id"], entry["category"])
    return shops


def parse_config(text: str, path: str, business_units: set[str] | None = None,
                 lenient: bool = False) -> GatewayConfig:
    """Parses and checks a gateways file; the BU ids are checked against the rules when given
    (lenient: a route to an unknown BU is logged and left out instead of refusing the file)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GatewayConfigError(f"{path}: {exc}") from None
    unknown = set(doc) - set(_KEYS)
    if unknown:
        raise GatewayConfigError(f"{path}: unknown section(s) {sorted(unknown)} (wechatpay, alipay)")
    wechat = _routes(f"{path}: wechatpay", doc.get("wechatpay", {}), *_KEYS["wechatpay"], business_units, lenient)
    alipay = _routes(f"{path}: alipay", doc.get("alipay", {}), *_KEYS["alipay"], business_units, lenient)
    return GatewayConfig(wechat, alipay, path)


def load_config(path: Path, business_units: set[str] | None = None, lenient: bool = False) -> GatewayConfig:
    if not path.exists():
        log.warning("no gateways file at %s: gateway payments need attach / passback_params routes", path)
        return GatewayConfig.empty()
    return parse_config(path.read_text(encoding="utf-8"), str(path), business_units, lenient)
