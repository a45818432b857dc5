//! The points mall (积分商城): exchanging points for an item of the catalogue, and the
//! order's life (ready for pick-up or shipped, collected; cancelled or expired with the
//! points, into their very lots, and the unit of stock given back). Pure, like every
//! engagement operation: the HTTP layer applies the result atomically in Redis, the stock
//! taken with the member's write (`ly_reserve`: a flash sale never sells more than it has).

use crate::coupons::{self, At};
use crate::engage::{grant_coupon, parse, pool_lines, refused, spend, stock_left, today, Context, Done, Rows};
use crate::engage_rules::{mall_budget_id, MallItem, MallKind};
use crate::errors::{CoreError, CoreResult};
use crate::events::check_id;
use crate::ledger::Part;
use crate::rules::RuleSet;
use crate::settlement::Line;
use crate::state::{MemberState, Order};
use crate::{tiers, wallet};
use serde::Deserialize;
use serde_json::json;

/// Closed orders a member's state keeps (the ledger has every one).
pub const MAX_CLOSED_ORDERS: usize = 20;
pub const ACTIONS: [&str; 5] = ["ready", "ship", "collect", "cancel", "expire"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangeRequest {
    member_id: String,
    item: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderRequest {
    member_id: String,
    order_id: String,
    action: String,
}

fn item<'a>(rules: &'a RuleSet, id: &str) -> CoreResult<&'a MallItem> {
    rules.engagement.mall_items.get(id).ok_or_else(|| CoreError::invalid_event("item", format!("unknown item {id:?}")))
}

/// Why this member may not buy the item now (None: they may), the stock aside.
pub fn refusal(rules: &RuleSet, state: &MemberState, it: &MallItem, now_ms: i64) -> Option<(&'static str, String)> {
    if it.from_ms.is_some_and(|f| now_ms < f) {
        return Some(("item", format!("{} is not on sale yet", it.id)));
    }
    if it.to_ms.is_some_and(|t| now_ms >= t) {
        return Some(("item", format!("the sale of {} has ended", it.id)));
    }
    if let Some(allowed) = &it.tiers {
        let tier = &tiers::effective_tier(rules, state, now_ms).id;
        if !allowed.contains(tier) {
            let mut names: Vec<&str> = allowed.iter().map(String::as_str).collect();
            names.sort();
            return Some(("tier", format!("{} is for {} members only; this member is {tier}", it.id, names.join(", "))));
        }
    }
    let day = today(rules, now_ms);
    let [d, today_n, total] = state.mall_bought.get(&it.id).copied().unwrap_or([day, 0, 0]);
    if it.per_member_limit.is_some_and(|l| total >= l) {
        return Some(("limit", format!("{} of {} per member bought already", total, it.per_member_limit.unwrap_or(0))));
    }
    let today_n = if d == day { today_n } else { 0 };
    if it.per_day_limit.is_some_and(|l| today_n >= l) {
        return Some(("limit", format!("{today_n} of {} a day bought today", it.per_day_limit.unwrap_or(0))));
    }
    None
}

/// The stocks an exchange of the item takes: the item's and its coupon template's.
pub fn budgets(rules: &RuleSet, it: &MallItem) -> Vec<(String, Option<i64>)> {
    let mut out = vec![(mall_budget_id(&it.id), it.stock)];
    if let MallKind::Coupon(t) | MallKind::Parking(t) = &it.kind {
        out.push((coupons::stock_budget_id(t), rules.coupon_templates.get(t).and_then(|t| t.stock)));
    }
    out
}

/// The settlement of `units` of an item (negative: given back): the points go to the pool,
/// the pool pays the supplying business unit the item's value.
fn lines(it: &MallItem, points: i64, units: i64) -> Vec<Line> {
    let mut l = pool_lines(points);
    l.push(Line::money("pool", -it.value_fen * units));
    l.push(Line::money(format!("bu:{}", it.bu), it.value_fen * units));
    l.retain(|x| x.amount_fen != 0 || x.points != 0);
    l
}

fn prune(state: &mut MemberState) {
    let mut closed: Vec<(i64, String)> = state
        .orders
        .iter()
        .filter(|(_, o)| matches!(o.status.as_str(), "collected" | "cancelled" | "expired"))
        .map(|(id, o)| (o.updated_at_ms, id.clone()))
        .collect();
    if closed.len() > MAX_CLOSED_ORDERS {
        closed.sort();
        for (_, id) in &closed[..closed.len() - MAX_CLOSED_ORDERS] {
            state.orders.remove(id);
        }
    }
}

pub fn exchange(rules: &RuleSet, state: &mut MemberState, op_id: &str, body: &[u8], ctx: &Context, now_ms: i64) -> CoreResult<Done> {
    check_id("Idempotency-Key", op_id)?;
    let req: ExchangeRequest = parse(body, "member_id, item")?;
    check_id("member_id", &req.member_id)?;
    check_id("item", &req.item)?;
    let it = item(rules, &req.item)?;
    if let Some((field, why)) = refusal(rules, state, it, now_ms) {
        return Err(refused(field, why));
    }
    let stocks = budgets(rules, it);
    if !stocks.iter().all(|(id, s)| stock_left(&ctx.spent, id, *s)) {
        return Err(refused("stock", format!("{} is out of stock", it.id)));
    }
    let lots = spend(rules, state, it.points, now_ms, &it.id)?;
    let day = today(rules, now_ms);
    let b = state.mall_bought.entry(it.id.clone()).or_insert([day, 0, 0]);
    if b[0] != day {
        *b = [day, 0, b[2]];
    }
    b[1] += 1;
    b[2] += 1;
    let mut rows = Rows::new(rules, state, op_id, &req.member_id, now_ms);
    let why = [Part::new("mall_exchange", it.id.clone(), -it.points)];
    rows.points("mall_exchange", -it.points, "points_mall", &it.bu, &why, &lots, &lines(it, -it.points, 1));
    let mut order = Order {
        item: it.id.clone(),
        points: it.points,
        lots,
        status: "placed".into(),
        placed_at_ms: now_ms,
        updated_at_ms: now_ms,
        collect_by_ms: now_ms + it.collect_days * crate::time::DAY_MS,
        coupon_id: None,
        cash_fen: it.cash_fen,
        paid_by: None,
    };
    if it.cash_fen > 0 {
        // Points + cash: the order waits for its cash part until `pay_minutes` have passed.
        order.status = "awaiting_payment".into();
        order.collect_by_ms = now_ms + it.pay_minutes * 60_000;
    }
    if let MallKind::Coupon(t) | MallKind::Parking(t) = &it.kind {
        let at = At { rules, member_id: &req.member_id, event_id: op_id, at_ms: now_ms, now_ms };
        let row = grant_coupon(rules, state, &at, t, &format!("mall:{}", it.id));
        order.coupon_id = row["coupon_id"].as_str().map(str::to_string);
        order.status = "collected".into();
        order.collect_by_ms = 0;
        rows.raw(row);
    }
    let result = json!({
        "order_id": op_id, "member_id": req.member_id, "item": it.id, "name": it.name, "status": order.status,
        "points": it.points, "coupon_id": order.coupon_id,
        "collect_by_ms": (order.collect_by_ms > 0 && it.cash_fen == 0).then_some(order.collect_by_ms),
        "cash_fen": (it.cash_fen > 0).then_some(it.cash_fen),
        "pay_by_ms": (it.cash_fen > 0).then_some(order.collect_by_ms),
        "available_after": wallet::available(rules, state, now_ms),
    });
    state.orders.insert(op_id.to_string(), order);
    prune(state);
    let consumed = stocks.into_iter().filter(|(_, s)| s.is_some()).map(|(id, _)| (id, 1)).collect();
    Ok(Done { consumed, ..Done::points(-it.points, &rows, result, None) })
}

pub fn order(rules: &RuleSet, state: &mut MemberState, op_id: &str, body: &[u8], now_ms: i64) -> CoreResult<Done> {
    check_id("Idempotency-Key", op_id)?;
    let req: OrderRequest = parse(body, "member_id, order_id, action")?;
    check_id("member_id", &req.member_id)?;
    check_id("order_id", &req.order_id)?;
    if !ACTIONS.contains(&req.action.as_str()) {
        return Err(CoreError::invalid_event("action", format!("must be one of {}", ACTIONS.join(", "))));
    }
    let Some(o) = state.orders.get(&req.order_id).cloned() else {
        return Err(refused("order_id", format!("member {} has no order {}", req.member_id, req.order_id)));
    };
    let open = matches!(o.status.as_str(), "awaiting_payment" | "placed" | "ready" | "shipped");
    let to = match (req.action.as_str(), o.status.as_str()) {
        ("ready", "placed") => "ready",
        ("ship", "placed") => "shipped",
        ("collect", "placed" | "ready" | "shipped") => "collected",
        ("cancel", _) if open => "cancelled",
        ("expire", _) if open && now_ms >= o.collect_by_ms => "expired",
        ("expire", _) if open => {
            return Err(refused("action", format!("order {} may be collected until {}", req.order_id, o.collect_by_ms)))
        }
        (a, "awaiting_payment") => {
            return Err(refused("action", format!("order {} awaits its cash part of {} fen: it cannot {a}", req.order_id, o.cash_fen)))
        }
        (a, s) => return Err(refused("action", format!("order {} is {s}: it cannot {a}", req.order_id))),
    };
    let mut rows = Rows::new(rules, state, op_id, &req.member_id, now_ms);
    let mut points = 0;
    let mut consumed = Vec::new();
    let it = rules.engagement.mall_items.get(&o.item);
    if matches!(to, "cancelled" | "expired") {
        // The points back into the lots they came from, the unit back in stock.
        wallet::restore(state, &o.lots);
        points = o.points;
        if let Some(b) = state.mall_bought.get_mut(&o.item) {
            b[2] -= 1;
            if b[0] == today(rules, o.placed_at_ms) && b[0] == today(rules, now_ms) {
                b[1] -= 1;
            }
        }
        let why = [Part::new("mall_return", o.item.clone(), o.points)];
        let settle = it.map_or_else(|| pool_lines(o.points), |it| lines(it, o.points, -1));
        let bu = it.map_or("", |it| it.bu.as_str());
        rows.points("mall_return", o.points, "points_mall", bu, &why, &o.lots, &settle);
        if it.is_some_and(|it| it.stock.is_some()) {
            consumed.push((mall_budget_id(&o.item), -1));
        }
    } else {
        let rule = match to {
            "ready" => "mall_ready",
            "shipped" => "mall_shipped",
            _ => "mall_collected",
        };
        let why = [Part::new(rule, o.item.clone(), 0)];
        rows.points("mall_order", 0, "points_mall", it.map_or("", |it| it.bu.as_str()), &why, &[], &[]);
    }
    let order = state.orders.get_mut(&req.order_id).expect("looked up above");
    order.status = to.to_string();
    order.updated_at_ms = now_ms;
    prune(state);
    let result = json!({
        "order_id": req.order_id, "member_id": req.member_id, "item": o.item, "status": to, "points_returned": points,
        // A paid cash part goes back through the gateway's refund of its payment.
        "cash_to_refund": o.paid_by.as_ref().filter(|_| points > 0).map(|p| json!({"payment": p, "amount_fen": o.cash_fen})),
        "available_after": wallet::available(rules, state, now_ms),
    });
    Ok(Done { consumed, ..Done::points(points, &rows, result, None) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Coupon;
    use rustc_hash::FxHashMap as HashMap;
    use serde_json::Value;

    const NOW: i64 = 1_795_395_600_000; // 2026-11-23T01:00:00Z
    const MALL: &str = r#"
[[coupon_templates]]
id = "coffee"
kind = "item"
item = "latte"
item_value_fen = 1800
valid_days = 30
stock = 5

[[mall_items]]
id = "umbrella"
kind = "goods"
points = 300
bu = "mall"
value_fen = 2500
stock = 10
per_day_limit = 1
collect_days = 7

[[mall_items]]
id = "latte"
kind = "coupon"
coupon = "coffee"
points = 100
bu = "hotel"
value_fen = 1800

[[mall_items]]
id = "lounge"
kind = "benefit"
points = 50
bu = "mall"
tiers = ["gold"]

[[mall_items]]
id = "kettle"
kind = "goods"
points = 200
cash_fen = 9900
pay_minutes = 15
bu = "mall"
value_fen = 1000
stock = 3
collect_days = 7

[[mall_items]]
id = "flash-bag"
kind = "goods"
points = 10
bu = "mall"
stock = 1
flash = true
valid_from = "2026-11-23T08:00:00+08:00"
valid_to = "2026-11-23T10:00:00+08:00"
"#;

    fn rich() -> MemberState {
        MemberState { lots: vec![[2026 * 12 + 8, 400], [2026 * 12 + 10, 600]], ..Default::default() }
    }

    fn ex(rules: &RuleSet, s: &mut MemberState, id: &str, item: &str, spent: &[(&str, i64)], at: i64) -> CoreResult<Done> {
        let ctx = Context { spent: spent.iter().map(|(k, v)| (k.to_string(), *v)).collect::<HashMap<_, _>>(), ..Default::default() };
        let body = serde_json::json!({"member_id": "m1", "item": item}).to_string();
        exchange(rules, s, id, body.as_bytes(), &ctx, at)
    }

    fn act(rules: &RuleSet, s: &mut MemberState, id: &str, order_id: &str, action: &str, at: i64) -> CoreResult<Done> {
        let body = serde_json::json!({"member_id": "m1", "order_id": order_id, "action": action}).to_string();
        order(rules, s, id, body.as_bytes(), at)
    }

    fn settlement(d: &Done) -> (i64, i64) {
        let rows: Value = serde_json::from_str(&d.rows_json).unwrap();
        let lines = rows[0]["settlement"].as_array().unwrap();
        (lines.iter().map(|l| l["points"].as_i64().unwrap()).sum(), lines.iter().map(|l| l["amount_fen"].as_i64().unwrap()).sum())
    }

    #[test]
    fn an_exchange_spends_the_oldest_lots_and_a_cancel_gives_them_back_with_the_stock() {
        let r = crate::tests_engine::rules_with(MALL).unwrap();
        let mut s = rich();
        let d = ex(&r, &mut s, "o1", "umbrella", &[], NOW).unwrap();
        assert_eq!(d.points, -300);
        assert_eq!(d.consumed, vec![("mall:umbrella".to_string(), 1)]);
        assert_eq!(s.lots, vec![[2026 * 12 + 8, 100], [2026 * 12 + 10, 600]], "the oldest lot first");
        assert_eq!(s.orders["o1"].status, "placed");
        assert_eq!(settlement(&d), (0, 0), "the books balance: points to the pool, the pool pays the BU");
        let rows: Value = serde_json::from_str(&d.rows_json).unwrap();
        assert!(rows[0]["settlement"].as_array().unwrap().iter().any(|l| l["account"] == "bu:mall" && l["amount_fen"] == 2500));
        // One a day: the second is refused, changing nothing.
        let before = s.clone();
        assert_eq!(ex(&r, &mut s, "o2", "umbrella", &[], NOW).unwrap_err().field(), "limit");
        assert_eq!(s, before);
        // Ready, then collected; a collected order cannot be cancelled.
        assert_eq!(act(&r, &mut s, "a1", "o1", "ready", NOW).unwrap().points, 0);
        let c = act(&r, &mut s, "a2", "o1", "cancel", NOW + 1).unwrap();
        assert_eq!(c.points, 300);
        assert_eq!(c.consumed, vec![("mall:umbrella".to_string(), -1)]);
        assert_eq!(s.lots, rich().lots, "the very lots back");
        assert_eq!(s.mall_bought["umbrella"][2], 0);
        assert_eq!(act(&r, &mut s, "a3", "o1", "collect", NOW + 2).unwrap_err().field(), "action");
        // Expiry: not before the deadline, then the points come back.
        ex(&r, &mut s, "o3", "umbrella", &[], NOW + 3).unwrap();
        assert_eq!(act(&r, &mut s, "a4", "o3", "expire", NOW + 4).unwrap_err().field(), "action");
        let late = NOW + 3 + 7 * crate::time::DAY_MS;
        assert_eq!(act(&r, &mut s, "a5", "o3", "expire", late).unwrap().points, 300);
        assert_eq!(s.orders["o3"].status, "expired");
    }

    #[test]
    fn stock_tier_window_points_and_the_flash_sale_limit_refuse() {
        let r = crate::tests_engine::rules_with(MALL).unwrap();
        let mut s = rich();
        assert_eq!(ex(&r, &mut s, "o1", "umbrella", &[("mall:umbrella", 10)], NOW).unwrap_err().field(), "stock");
        assert_eq!(ex(&r, &mut s, "o2", "lounge", &[], NOW).unwrap_err().field(), "tier");
        let before_open = NOW - 3_600_000; // 08:00 local is NOW - 1 h
        assert_eq!(ex(&r, &mut s, "o3", "flash-bag", &[], before_open - 1).unwrap_err().field(), "item");
        ex(&r, &mut s, "o4", "flash-bag", &[], NOW).unwrap();
        assert_eq!(ex(&r, &mut s, "o5", "flash-bag", &[], NOW + 1).unwrap_err().field(), "limit", "one per member");
        assert_eq!(ex(&r, &mut s, "o6", "flash-bag", &[], NOW + 7_200_000).unwrap_err().field(), "item", "ended");
        let mut poor = MemberState::default();
        assert_eq!(ex(&r, &mut poor, "o7", "umbrella", &[], NOW).unwrap_err().field(), "points");
        // A coupon item is issued into the wallet at once, its template's stock taken too.
        let d = ex(&r, &mut s, "o8", "latte", &[], NOW).unwrap();
        assert_eq!(d.consumed, vec![("stock:coffee".to_string(), 1)]);
        let coupon = s.orders["o8"].coupon_id.clone().unwrap();
        assert!(s.coupons.iter().any(|c: &Coupon| c.id == coupon && c.status == "active"));
        assert_eq!(s.orders["o8"].status, "collected");
        assert_eq!(ex(&r, &mut s, "o9", "latte", &[("stock:coffee", 5)], NOW).unwrap_err().field(), "stock");
    }

    fn pay_order(r: &RuleSet, s: &mut MemberState, id: &str, order_id: &str, fen: i64) -> crate::accrual::Applied {
        let ev = crate::events::parse_payment_event(
            serde_json::json!({"event_id": id, "type": "payment", "occurred_at": "2026-11-23T09:05:00+08:00",
                "member_id": "m1", "bu_id": "mall", "merchant_id": "x", "category": "fashion", "amount_fen": fen,
                "channel": "wechat", "mall_order": order_id}).to_string().as_bytes()).unwrap();
        crate::accrual::accrue_payment(r, &ev, "m1", s, &mut HashMap::default(), NOW).unwrap()
    }

    fn parts(a: &crate::accrual::Applied) -> Vec<String> {
        let rows: Value = serde_json::from_str(&a.rows_json).unwrap();
        rows[0]["explain"].as_array().unwrap().iter().map(|p| format!("{}:{}", p["rule"].as_str().unwrap(), p["id"].as_str().unwrap_or(""))).collect()
    }

    #[test]
    fn points_and_cash_wait_for_the_payment_naming_the_order_and_expire_unpaid() {
        let r = crate::tests_engine::rules_with(MALL).unwrap();
        let mut s = rich();
        let d = ex(&r, &mut s, "o1", "kettle", &[], NOW).unwrap();
        assert_eq!(d.points, -200);
        let res: Value = serde_json::from_str(&d.result_json).unwrap();
        assert_eq!((res["status"].as_str(), res["cash_fen"].as_i64(), res["pay_by_ms"].as_i64()),
                   (Some("awaiting_payment"), Some(9900), Some(NOW + 15 * 60_000)));
        assert_eq!(act(&r, &mut s, "a0", "o1", "collect", NOW).unwrap_err().field(), "action", "not before it is paid");
        // Too little, or another order: the payment earns as any, the order still waits.
        let short = pay_order(&r, &mut s, "p1", "o1", 5000);
        assert!(short.points > 0);
        assert!(parts(&short).contains(&"mall_cash_unmatched:o1: 5000 fen paid of 9900 fen".to_string()), "{:?}", parts(&short));
        assert!(parts(&pay_order(&r, &mut s, "p2", "nope", 9900)).iter().any(|p| p.starts_with("mall_cash_unmatched:nope")));
        assert_eq!(s.orders["o1"].status, "awaiting_payment");
        // Paid in full: placed, collectable for collect_days from the payment.
        let paid = pay_order(&r, &mut s, "p3", "o1", 9900);
        assert!(parts(&paid).contains(&"mall_cash:o1".to_string()));
        assert_eq!((s.orders["o1"].status.as_str(), s.orders["o1"].paid_by.as_deref()), ("placed", Some("p3")));
        assert!(s.orders["o1"].collect_by_ms > NOW + 6 * crate::time::DAY_MS);
        assert!(parts(&pay_order(&r, &mut s, "p4", "o1", 9900)).contains(&"mall_cash_unmatched:o1: the order is placed".to_string()));
        // Cancelled: the points back, and the cash named for the gateway's refund.
        let c = act(&r, &mut s, "a1", "o1", "cancel", NOW + 1).unwrap();
        let res: Value = serde_json::from_str(&c.result_json).unwrap();
        assert_eq!((c.points, res["cash_to_refund"]["payment"].as_str(), res["cash_to_refund"]["amount_fen"].as_i64()),
                   (200, Some("p3"), Some(9900)));
        // Not paid in time: expired, the points and the unit back, no cash to refund.
        ex(&r, &mut s, "o2", "kettle", &[], NOW + 2).unwrap();
        assert_eq!(act(&r, &mut s, "a2", "o2", "expire", NOW + 2 + 14 * 60_000).unwrap_err().field(), "action");
        let e = act(&r, &mut s, "a3", "o2", "expire", NOW + 2 + 15 * 60_000).unwrap();
        assert_eq!((e.points, e.consumed.clone()), (200, vec![("mall:kettle".to_string(), -1)]));
        let res: Value = serde_json::from_str(&e.result_json).unwrap();
        assert!(res["cash_to_refund"].is_null());
        assert_eq!(pay_order(&r, &mut s, "p5", "o2", 9900).points, paid.points, "a late payment earns, the order stays expired");
        assert_eq!(s.orders["o2"].status, "expired");
    }

    #[test]
    fn the_rules_checker_names_the_field_of_a_bad_item() {
        for (bad, field) in [
            ("[[mall_items]]\nid = \"x\"\nkind = \"goods\"\npoints = 1\nbu = \"nowhere\"\n", "mall_items[0].bu"),
            ("[[mall_items]]\nid = \"x\"\nkind = \"coupon\"\npoints = 1\nbu = \"mall\"\n", "mall_items[0].coupon"),
            ("[[mall_items]]\nid = \"x\"\nkind = \"goods\"\npoints = 1\nbu = \"mall\"\nflash = true\n", "mall_items[0].flash"),
            ("[[mall_items]]\nid = \"x\"\nkind = \"goods\"\npoints = 1\nbu = \"mall\"\ntiers = [\"tin\"]\n", "mall_items[0].tiers"),
            ("[[mall_items]]\nid = \"x\"\nkind = \"benefit\"\npoints = 1\nbu = \"mall\"\npay_minutes = 5\n", "mall_items[0].pay_minutes"),
            ("[[mall_items]]\nid = \"x\"\nkind = \"toy\"\npoints = 1\nbu = \"mall\"\n", "mall_items[0].kind"),
        ] {
            let err = crate::tests_engine::rules_with(bad).unwrap_err();
            assert_eq!(err.field(), field, "{bad}");
        }
    }
}
