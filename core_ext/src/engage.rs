//! Engagement operations (seeds 001-004), each a pure function of (rules, member
//! state, request, context, now) that the HTTP layer applies atomically in Redis:
//! games with prize pools and card collections, sign-in plans (escalating cycles,
//! make-up sign-ins, contracts), partner exchange (out with a pending state, in),
//! and stored value (top-up, payment at the till, refund). Refusals happen before
//! anything changes; every movement comes with its ledger rows.

use crate::coupons::{self, At};
use crate::engage_rules::{Game, Reward, ODDS_TOTAL};
use crate::errors::{CoreError, CoreResult};
use crate::events::{check_id, MAX_AMOUNT_FEN};
use crate::ledger::{rows_json, LedgerRow, Part};
use crate::rules::RuleSet;
use crate::settlement::Line;
use crate::state::{ContractState, Earned, MemberState, PendingExchange, PlanState};
use crate::time::{local_day_of_date, Local};
use crate::{tiers, wallet};
use rustc_hash::FxHashMap as HashMap;
use serde::Deserialize;
use serde_json::{json, Value};

/// The operations of this module; the points mall's (`mall.rs`) are dispatched beside them.
pub const OPS: [&str; 10] = [
    "game_play",
    "sign_in",
    "sign_in_makeup",
    "sign_in_contract",
    "exchange_out",
    "exchange_settle",
    "exchange_in",
    "sv_topup",
    "sv_pay",
    "sv_refund",
];

/// What the caller read from Redis for the operation.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Context {
    /// A game's draw in [0, 1000000), from a cryptographically secure generator.
    pub draw: Option<i64>,
    /// Budget id -> units taken so far (prize and coupon stocks).
    pub spent: HashMap<String, i64>,
    /// A stored-value refund: the payment's record (amount, refunded, result).
    pub original: Option<Original>,
    /// A receipt: the member's recent payments from their event records, (paid at ms,
    /// merchant, amount fen, event id), so a purchase that earned is not earned again.
    pub purchases: Vec<(i64, String, i64, String)>,
    /// A members' event: how many members wait for a seat (a sign-up joins them).
    pub waiting: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Original {
    pub amount_fen: i64,
    pub refunded_fen: i64,
    pub bu_id: String,
    pub merchant_id: String,
    pub category: String,
}

/// An applied operation: the movements to write, its rows and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// Points balance delta (the sum of the points rows).
    pub points: i64,
    /// Stored-value delta, fen.
    pub sv_fen: i64,
    /// What the event record keeps as its amount (a stored-value payment: what was paid).
    pub amount_fen: i64,
    /// The stored-value payment a refund is of (its record takes the refunded amount).
    pub refund_of: Option<String>,
    pub rows_json: String,
    pub result_json: String,
    /// Budgets consumed (prize stock, coupon stock): (budget id, units).
    pub consumed: Vec<(String, i64)>,
    /// A payment or refund event for the accrual pipeline (stored value at the till).
    pub publish: Option<String>,
}

impl Done {
    /// An operation that moves points only (games, sign-in plans, partner exchange).
    pub(crate) fn points(points: i64, rows: &Rows, result: Value, publish: Option<String>) -> Done {
        Done {
            points,
            sv_fen: 0,
            amount_fen: 0,
            refund_of: None,
            rows_json: rows.json(),
            result_json: result.to_string(),
            consumed: Vec::new(),
            publish,
        }
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> CoreError {
    CoreError::invalid_event(field, reason)
}

pub(crate) fn refused(field: &str, reason: impl Into<String>) -> CoreError {
    CoreError::rejected(field, reason)
}

pub(crate) fn parse<T: for<'de> Deserialize<'de>>(body: &[u8], fields: &str) -> CoreResult<T> {
    crate::events::check_unique_keys(body)?;
    serde_json::from_slice(body).map_err(|e| invalid("body", format!("{e} (expected {fields})")))
}

/// Rows of one operation, sharing its id, member, time and rules.
pub(crate) struct Rows<'a> {
    rules: &'a RuleSet,
    op_id: &'a str,
    member_id: &'a str,
    tier: String,
    now_ms: i64,
    out: Vec<String>,
}

impl<'a> Rows<'a> {
    pub(crate) fn new(rules: &'a RuleSet, state: &MemberState, op_id: &'a str, member_id: &'a str, now_ms: i64) -> Self {
        let tier = tiers::effective_tier(rules, state, now_ms).id.clone();
        Rows { rules, op_id, member_id, tier, now_ms, out: Vec::new() }
    }

    /// A points row; `lots` are the lots a spend took (or a return gives back).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn points(&mut self, kind: &str, points: i64, category: &str, merchant: &str, explain: &[Part], lots: &[[i64; 2]],
              settlement: &[Line]) {
        let row = LedgerRow {
            event_id: self.op_id,
            member_id: self.member_id,
            kind,
            points,
            amount_fen: 0,
            bu_id: "",
            format: "",
            merchant_id: merchant,
            category,
            channel: "engagement",
            occurred_at_ms: self.now_ms,
            refund_of: "",
            tier: &self.tier,
            rules_version: &self.rules.version,
            processed_at_ms: self.now_ms,
            explain,
            lots,
            settlement,
        };
        let json = rows_json(&[row]);
        self.out.push(json[1..json.len() - 1].to_string());
    }

    pub(crate) fn raw(&mut self, v: Value) {
        self.out.push(v.to_string());
    }

    fn json(&self) -> String {
        format!("[{}]", self.out.join(","))
    }
}

/// Points moved between the members and the pool (marketing points, spends, stakes).
pub(crate) fn pool_lines(points_to_members: i64) -> Vec<Line> {
    let mut l = vec![Line::points("members", points_to_members), Line::points("pool", -points_to_members)];
    l.retain(|x| x.points != 0);
    l
}

/// Points between the members and the pool, and money from the pool to a partner (an
/// exchange out: the pool buys the partner's units; negative: in, or a failed one).
pub(crate) fn partner_lines(points_to_members: i64, partner: &str, fen_to_partner: i64) -> Vec<Line> {
    let mut l = pool_lines(points_to_members);
    l.push(Line::money("pool", -fen_to_partner));
    l.push(Line::money(format!("partner:{partner}"), fen_to_partner));
    l.retain(|x| x.amount_fen != 0 || x.points != 0);
    l
}

pub(crate) fn spend(rules: &RuleSet, state: &mut MemberState, points: i64, now_ms: i64, what: &str) -> CoreResult<Vec<[i64; 2]>> {
    wallet::release_due(state, now_ms);
    let available = wallet::available(rules, state, now_ms);
    wallet::spend_fifo(rules, state, points, now_ms).ok_or_else(|| {
        refused("points", format!("insufficient points: {what} needs {points}, the member has {available} available"))
    })
}

fn month_of(rules: &RuleSet, now_ms: i64) -> i64 {
    Local::of(now_ms, rules.utc_offset_minutes).month_index as i64
}

pub(crate) fn today(rules: &RuleSet, now_ms: i64) -> i64 {
    Local::of(now_ms, rules.utc_offset_minutes).day
}

pub fn apply(
    rules: &RuleSet,
    op: &str,
    state: &mut MemberState,
    op_id: &str,
    body: &[u8],
    ctx: &Context,
    now_ms: i64,
) -> CoreResult<Done> {
    check_id("Idempotency-Key", op_id)?;
    match op {
        "game_play" => play(rules, state, op_id, body, ctx, now_ms),
        "sign_in" | "sign_in_makeup" | "sign_in_contract" => sign_in(rules, op, state, op_id, body, now_ms),
        "exchange_out" | "exchange_in" | "exchange_settle" => exchange(rules, op, state, op_id, body, now_ms),
        "sv_topup" | "sv_pay" | "sv_refund" => stored_value(rules, op, state, op_id, body, ctx, now_ms),
        _ => Err(invalid("op", format!("must be one of {}, mall_exchange, mall_order", OPS.join(", ")))),
    }
}

// ---- games ---------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlayRequest {
    member_id: String,
    game: String,
}

pub(crate) fn stock_left(spent: &HashMap<String, i64>, id: &str, stock: Option<i64>) -> bool {
    stock.is_none_or(|s| spent.get(id).copied().unwrap_or(0) < s)
}

/// Issues a coupon of `template` as a prize: the coupon row (issued, pushed downstream).
pub(crate) fn grant_coupon(
    rules: &RuleSet,
    state: &mut MemberState,
    at: &At,
    template: &str,
    source: &str,
) -> Value {
    let tpl = &rules.coupon_templates[template];
    let (valid_from_ms, valid_until_ms) = match tpl.validity {
        coupons::Validity::Days(d) => (at.at_ms, at.at_ms + d * crate::time::DAY_MS),
        coupons::Validity::Fixed { from_ms, to_ms } => (from_ms, to_ms),
    };
    let c = crate::state::Coupon {
        id: coupons::coupon_id(at.event_id, source),
        template: template.to_string(),
        trigger: source.to_string(),
        issued_at_ms: at.at_ms,
        valid_from_ms,
        valid_until_ms,
        status: "active".into(),
        ..Default::default()
    };
    state.coupons.push(c.clone());
    let row = coupons::issued_row(at, &c);
    serde_json::to_value(row).expect("coupon rows serialise")
}

fn play(rules: &RuleSet, state: &mut MemberState, op_id: &str, body: &[u8], ctx: &Context, now_ms: i64) -> CoreResult<Done> {
    let req: PlayRequest = parse(body, "member_id, game")?;
    check_id("member_id", &req.member_id)?;
    check_id("game", &req.game)?;
    let game: &Game = rules
        .engagement
        .games
        .get(&req.game)
        .ok_or_else(|| invalid("game", format!("unknown game {:?}", req.game)))?;
    let draw = ctx.draw.ok_or_else(|| invalid("draw", "is required"))?;
    if !(0..ODDS_TOTAL).contains(&draw) {
        return Err(invalid("draw", format!("must be in [0, {ODDS_TOTAL})")));
    }
    if game.from_ms.is_some_and(|f| now_ms < f) || game.to_ms.is_some_and(|t| now_ms >= t) {
        return Err(refused("game", format!("game {:?} is not open now", game.id)));
    }
    let day = today(rules, now_ms);
    let played = state.game_plays.get(&game.id).filter(|p| p[0] == day).map_or(0, |p| p[1]);
    if let Some(limit) = game.daily_limit {
        if played >= limit {
            return Err(refused("game", format!("daily limit reached: {played} of {limit} plays of {:?} today", game.id)));
        }
    }
    let lots = if game.cost_points > 0 { spend(rules, state, game.cost_points, now_ms, "this play")? } else { Vec::new() };
    state.game_plays.insert(game.id.clone(), [day, played + 1]);

    // The draw picks a prize by its odds; one whose stock is gone is "thanks for playing".
    let mut cum = 0;
    let picked = game.prizes.iter().find(|p| {
        cum += p.odds_ppm;
        draw < cum
    });
    let mut outcome = "thanks";
    let mut consumed: Vec<(String, i64)> = Vec::new();
    if let Some(p) = picked {
        let pid = crate::engage_rules::prize_budget_id(&game.id, &p.id);
        let mut ok = stock_left(&ctx.spent, &pid, p.stock);
        let mut budgets = vec![(pid, p.stock)];
        if let Reward::Coupon(t) = &p.reward {
            let sid = coupons::stock_budget_id(t);
            let stock = rules.coupon_templates[t].stock;
            ok = ok && stock_left(&ctx.spent, &sid, stock);
            budgets.push((sid, stock));
        }
        if ok {
            outcome = "prize";
            consumed = budgets.into_iter().filter(|(_, s)| s.is_some()).map(|(id, _)| (id, 1)).collect();
        } else {
            outcome = "out_of_stock";
        }
    }
    let prize = picked.filter(|_| outcome == "prize");

    let mut rows = Rows::new(rules, state, op_id, &req.member_id, now_ms);
    let at = At { rules, member_id: &req.member_id, event_id: op_id, at_ms: now_ms, now_ms };
    let source = format!("game:{}", game.id);
    let mut points = -game.cost_points;
    let mut answer_prize = json!(null);
    let mut set_done = json!(null);
    if game.cost_points > 0 {
        let cost = [Part::new("game_cost", game.id.clone(), -game.cost_points)];
        rows.points("game_cost", -game.cost_points, &game.kind, &game.id, &cost, &lots, &pool_lines(-game.cost_points));
    }
    let mut coupon_rows: Vec<Value> = Vec::new();
    if let Some(p) = prize {
        match &p.reward {
            Reward::Points(n) => {
                wallet::credit(state, *n, month_of(rules, now_ms), None);
                points += n;
                let why = [Part::new("game_prize", p.id.clone(), *n)];
                rows.points("game_prize", *n, &game.kind, &game.id, &why, &[], &pool_lines(*n));
                answer_prize = json!({"prize": p.id, "kind": "points", "points": n});
            }
            Reward::Coupon(t) => {
                let row = grant_coupon(rules, state, &at, t, &source);
                answer_prize = json!({"prize": p.id, "kind": "coupon", "coupon_id": row["coupon_id"], "template": t,
                                      "coupon_kind": row["coupon_kind"]});
                coupon_rows.push(row);
            }
            Reward::Card(c) => {
                let held = state.cards.entry(game.id.clone()).or_default();
                *held.entry(c.clone()).or_insert(0) += 1;
                answer_prize = json!({"prize": p.id, "kind": "card", "card": c});
                let set = game.cards();
                if set.iter().all(|c| held.get(*c).copied().unwrap_or(0) > 0) {
                    for c in &set {
                        let n = held.get_mut(*c).expect("checked above");
                        *n -= 1;
                    }
                    held.retain(|_, n| *n > 0);
                    let mut reward = json!({"points": game.set_reward_points});
                    if game.set_reward_points > 0 {
                        wallet::credit(state, game.set_reward_points, month_of(rules, now_ms), None);
                        points += game.set_reward_points;
                        let why = [Part::new("card_set", game.id.clone(), game.set_reward_points)];
                        rows.points("card_set", game.set_reward_points, &game.kind, &game.id, &why, &[],
                                    &pool_lines(game.set_reward_points));
                    }
                    if let Some(t) = &game.set_reward_coupon {
                        let row = grant_coupon(rules, state, &at, t, &format!("{source}:set"));
                        reward["coupon_id"] = row["coupon_id"].clone();
                        coupon_rows.push(row);
                    }
                    set_done = reward;
                }
            }
        }
    }
    if rows.out.is_empty() {
        // A free play that won nothing still leaves its trace in the points ledger.
        let why = [Part::new("game_play", game.id.clone(), 0)];
        rows.points("game_play", 0, &game.kind, &game.id, &why, &[], &[]);
    }
    for r in coupon_rows {
        rows.raw(r);
    }
    // The audit record: the draw, the odds it was drawn against and the stock seen.
    let odds: Vec<Value> = game
        .prizes
        .iter()
        .map(|p| {
            let id = crate::engage_rules::prize_budget_id(&game.id, &p.id);
            json!({"prize": p.id, "odds_ppm": p.odds_ppm, "stock": p.stock,
                   "taken": ctx.spent.get(&id).copied().unwrap_or(0)})
        })
        .collect();
    rows.raw(json!({
        "table": "game_draws", "event_id": op_id, "member_id": req.member_id, "game_id": game.id,
        "game_kind": game.kind, "draw": draw, "odds_total": ODDS_TOTAL, "odds": Value::Array(odds).to_string(),
        "prize_id": picked.map_or("", |p| p.id.as_str()), "outcome": outcome, "cost_points": game.cost_points,
        "rules_version": rules.version, "occurred_at_ms": now_ms, "processed_at_ms": now_ms,
    }));
    let cards = state.cards.get(&game.id).cloned().unwrap_or_default();
    let result = json!({
        "play_id": op_id, "member_id": req.member_id, "game": game.id, "kind": game.kind, "cost_points": game.cost_points,
        "draw": draw, "outcome": outcome, "prize": answer_prize, "set_completed": set_done,
        "cards": if game.kind == "cards" { json!(cards) } else { json!(null) },
        "plays_today": played + 1, "available_after": wallet::available(rules, state, now_ms),
    });
    Ok(Done { consumed, ..Done::points(points, &rows, result, None) })
}

// ---- sign-in plans ---------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignInRequest {
    member_id: String,
    plan: String,
    #[serde(default)]
    date: Option<String>,
    #[serde(default)]
    stake: Option<i64>,
}

fn bit(mask: u32, i: i64) -> bool {
    (0..32).contains(&i) && mask & (1 << i) != 0
}

fn sign_in(rules: &RuleSet, op: &str, state: &mut MemberState, op_id: &str, body: &[u8], now_ms: i64) -> CoreResult<Done> {
    let req: SignInRequest = parse(body, "member_id, plan, and date (make-up) or stake (contract)")?;
    check_id("member_id", &req.member_id)?;
    check_id("plan", &req.plan)?;
    let plan = rules
        .engagement
        .sign_in_plans
        .get(&req.plan)
        .ok_or_else(|| invalid("plan", format!("unknown sign-in plan {:?}", req.plan)))?;
    let day = today(rules, now_ms);
    let n = plan.cycle_days;
    let mut ps = state.plans.get(&plan.id).cloned().unwrap_or_default();
    if ps.start_day == 0 || day - ps.start_day >= n || day < ps.start_day {
        ps = PlanState { contract: ps.contract.take(), ..PlanState::default() };
        ps.start_day = day;
    }
    let idx = day - ps.start_day;
    let mut rows = Rows::new(rules, state, op_id, &req.member_id, now_ms);
    let points;
    let result;
    match op {
        "sign_in" => {
            if req.date.is_some() || req.stake.is_some() {
                return Err(invalid("body", "a sign-in takes member_id and plan only"));
            }
            if bit(ps.signed, idx) {
                return Err(refused("plan", format!("already signed in to {:?} today", plan.id)));
            }
            ps.signed |= 1 << idx;
            let kept = ps.signed | ps.made_up;
            let streak = (0..=idx).rev().take_while(|i| bit(kept, *i)).count() as i64;
            let reward = plan.rewards[(streak - 1) as usize];
            let mut parts = vec![Part::new("sign_in_plan", format!("{}:day{streak}", plan.id), reward)];
            let mut contract = json!(null);
            if let Some(mut c) = ps.contract.take() {
                let ci = day - c.start_day;
                if (0..n).contains(&ci) {
                    c.signed |= 1 << ci;
                }
                let missed = (0..ci.min(n)).any(|i| !bit(c.signed, i));
                if missed || ci >= n {
                    parts.push(Part::new("contract_lost", format!("{}:{}", plan.id, c.stake), 0));
                    contract = json!({"status": "lost", "stake": c.stake});
                } else if ci == n - 1 {
                    let bonus = c.stake * plan.contract.as_ref().map_or(0, |k| k.bonus_pct) / 100;
                    parts.push(Part::new("contract_kept", format!("{}:{}", plan.id, c.stake), c.stake + bonus));
                    contract = json!({"status": "kept", "stake": c.stake, "bonus": bonus, "paid": c.stake + bonus});
                } else {
                    contract = json!({"status": "running", "stake": c.stake, "days_kept": ci + 1, "days": n});
                    ps.contract = Some(c);
                }
            }
            points = parts.iter().map(|p| p.points).sum();
            wallet::credit(state, points, month_of(rules, now_ms), None);
            rows.points("sign_in_plan", points, &plan.id, "", &parts, &[], &pool_lines(points));
            result = json!({"status": "signed_in", "streak": streak, "points": points, "reward": reward,
                            "contract": contract});
        }
        "sign_in_makeup" => {
            let cost = plan.makeup_cost_points.ok_or_else(|| refused("plan", format!("{:?} has no make-up sign-in", plan.id)))?;
            let date = req.date.as_deref().ok_or_else(|| invalid("date", "is required (YYYY-MM-DD)"))?;
            let d = local_day_of_date(date).ok_or_else(|| invalid("date", "must be a date YYYY-MM-DD"))?;
            let i = d - ps.start_day;
            if !(0..idx).contains(&i) {
                return Err(refused("date", format!("{date} is not an earlier day of the current {n}-day cycle")));
            }
            if bit(ps.signed | ps.made_up, i) {
                return Err(refused("date", format!("{date} is signed in already")));
            }
            if ps.makeups >= plan.makeup_max_per_cycle {
                return Err(refused("date", format!("{} make-up sign-ins per cycle at most", plan.makeup_max_per_cycle)));
            }
            let lots = spend(rules, state, cost, now_ms, "a make-up sign-in")?;
            ps.made_up |= 1 << i;
            ps.makeups += 1;
            points = -cost;
            let parts = [Part::new("sign_in_makeup", format!("{}:{date}", plan.id), -cost)];
            rows.points("sign_in_makeup", -cost, &plan.id, "", &parts, &lots, &pool_lines(-cost));
            result = json!({"status": "made_up", "date": date, "cost_points": cost});
        }
        _ => {
            let k = plan.contract.as_ref().ok_or_else(|| refused("plan", format!("{:?} has no contract sign-in", plan.id)))?;
            let stake = req.stake.ok_or_else(|| invalid("stake", "is required"))?;
            if !(k.min_stake..=k.max_stake).contains(&stake) {
                return Err(invalid("stake", format!("must be from {} to {} points", k.min_stake, k.max_stake)));
            }
            if ps.contract.is_some() {
                return Err(refused("plan", "a contract of this plan is running"));
            }
            let lots = spend(rules, state, stake, now_ms, "the stake")?;
            let signed = if bit(ps.signed, idx) { 1 } else { 0 };
            ps.contract = Some(ContractState { stake, start_day: day, signed });
            points = -stake;
            let parts = [Part::new("contract_stake", plan.id.clone(), -stake)];
            rows.points("contract_stake", -stake, &plan.id, "", &parts, &lots, &pool_lines(-stake));
            result = json!({"status": "staked", "stake": stake, "days": n, "bonus_pct": k.bonus_pct,
                            "ends_on_day": day + n - 1});
        }
    }
    state.plans.insert(plan.id.clone(), ps.clone());
    let mut result = result;
    result["plan"] = json!(plan.id);
    result["member_id"] = json!(req.member_id);
    result["cycle"] = json!({"start_day": ps.start_day, "day": idx + 1, "days": n,
                             "signed": (0..n).filter(|i| bit(ps.signed, *i)).map(|i| i + 1).collect::<Vec<_>>(),
                             "made_up": (0..n).filter(|i| bit(ps.made_up, *i)).map(|i| i + 1).collect::<Vec<_>>()});
    result["available_after"] = json!(wallet::available(rules, state, now_ms));
    Ok(Done::points(points, &rows, result, None))
}

// ---- partner exchange --------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangeRequest {
    member_id: String,
    #[serde(default)]
    partner: Option<String>,
    #[serde(default)]
    points: Option<i64>,
    #[serde(default)]
    units: Option<i64>,
    #[serde(default)]
    exchange_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

fn exchange(rules: &RuleSet, op: &str, state: &mut MemberState, op_id: &str, body: &[u8], now_ms: i64) -> CoreResult<Done> {
    let req: ExchangeRequest = parse(body, "member_id with partner and points (out) or units (in), or exchange_id and status")?;
    check_id("member_id", &req.member_id)?;
    let mut rows = Rows::new(rules, state, op_id, &req.member_id, now_ms);
    let day = today(rules, now_ms);
    if op == "exchange_settle" {
        let xid = req.exchange_id.as_deref().ok_or_else(|| invalid("exchange_id", "is required"))?;
        check_id("exchange_id", xid)?;
        let status = req.status.as_deref().unwrap_or_default();
        if !["confirmed", "failed"].contains(&status) {
            return Err(invalid("status", "must be confirmed or failed"));
        }
        let x = state
            .exchanges
            .remove(xid)
            .ok_or_else(|| refused("exchange_id", format!("no pending exchange {xid:?} of member {:?}", req.member_id)))?;
        let p = rules.engagement.partners.get(&x.partner);
        let value = x.units * p.map_or(0, |p| p.unit_value_fen);
        let (kind, points) = if status == "confirmed" { ("exchange_confirmed", 0) } else { ("exchange_returned", x.points) };
        let mut lines = Vec::new();
        if status == "failed" {
            wallet::restore(state, &x.lots);
            // The points come back, and the partner is owed nothing for them.
            lines = partner_lines(x.points, &x.partner, -value);
            if let Some(d) = state.exchange_days.get_mut(&x.partner).filter(|d| d[0] == Local::of(x.at_ms, rules.utc_offset_minutes).day) {
                d[1] -= x.points;
            }
        }
        let parts = [Part::new(if status == "confirmed" { "partner_confirmed" } else { "partner_failed" }, xid, points)];
        let returned = if status == "failed" { x.lots.clone() } else { Vec::new() };
        rows.points(kind, points, &x.partner, xid, &parts, &returned, &lines);
        let result = json!({"exchange_id": xid, "member_id": req.member_id, "partner": x.partner, "status": status,
                            "points": x.points, "units": x.units, "points_returned": points,
                            "available_after": wallet::available(rules, state, now_ms)});
        return Ok(Done::points(points, &rows, result, None));
    }
    let pid = req.partner.as_deref().ok_or_else(|| invalid("partner", "is required"))?;
    check_id("partner", pid)?;
    let partner = rules.engagement.partners.get(pid).ok_or_else(|| invalid("partner", format!("unknown partner {pid:?}")))?;
    let used = state.exchange_days.get(pid).filter(|d| d[0] == day).copied().unwrap_or([day, 0, 0]);
    let limit = partner.daily_limit_points;
    if op == "exchange_out" {
        let per = partner.points_per_unit_out.ok_or_else(|| refused("partner", format!("{pid:?} takes no points out")))?;
        let points = match req.points {
            Some(p @ 1..=1_000_000_000) if p % per == 0 => p,
            _ => return Err(invalid("points", format!("must be a positive multiple of {per} (points per {} unit)", partner.kind))),
        };
        if used[1] + points > limit {
            return Err(refused("points", format!("daily limit: {} of {limit} points sent to {pid:?} today", used[1])));
        }
        let lots = spend(rules, state, points, now_ms, "this exchange")?;
        let units = points / per;
        let value = units * partner.unit_value_fen;
        state.exchange_days.insert(pid.to_string(), [day, used[1] + points, used[2]]);
        state.exchanges.insert(op_id.to_string(), PendingExchange { partner: pid.to_string(), points, units, lots: lots.clone(), at_ms: now_ms });
        let lines = partner_lines(-points, pid, value);
        let parts = [Part::new("partner_out", format!("{pid}:{units}"), -points)];
        rows.points("exchange_out", -points, pid, op_id, &parts, &lots, &lines);
        let result = json!({"exchange_id": op_id, "member_id": req.member_id, "partner": pid, "direction": "out",
                            "status": "pending", "points": points, "units": units,
                            "available_after": wallet::available(rules, state, now_ms)});
        let publish = json!({"kind": "partner_exchange", "push_id": op_id, "exchange_id": op_id, "partner": pid,
                             "member_id": req.member_id, "units": units, "points": points}).to_string();
        return Ok(Done::points(-points, &rows, result, Some(publish)));
    }
    let per = partner.points_per_unit_in.ok_or_else(|| refused("partner", format!("{pid:?} sends no points in")))?;
    let units = match req.units {
        Some(u @ 1..=1_000_000_000) => u,
        _ => return Err(invalid("units", "must be a positive number of partner units")),
    };
    let points = units * per;
    if used[2] + points > limit {
        return Err(refused("units", format!("daily limit: {} of {limit} points received from {pid:?} today", used[2])));
    }
    state.exchange_days.insert(pid.to_string(), [day, used[1], used[2] + points]);
    wallet::credit(state, points, month_of(rules, now_ms), None);
    let value = units * partner.unit_value_fen;
    let lines = partner_lines(points, pid, -value);
    let parts = [Part::new("partner_in", format!("{pid}:{units}"), points)];
    rows.points("exchange_in", points, pid, op_id, &parts, &[], &lines);
    let result = json!({"exchange_id": op_id, "member_id": req.member_id, "partner": pid, "direction": "in",
                        "status": "credited", "points": points, "units": units,
                        "available_after": wallet::available(rules, state, now_ms)});
    Ok(Done::points(points, &rows, result, None))
}

// ---- stored value ----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredValueRequest {
    member_id: String,
    amount_fen: i64,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    bu_id: Option<String>,
    #[serde(default)]
    merchant_id: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    payment_id: Option<String>,
}

fn stored_value(
    rules: &RuleSet,
    op: &str,
    state: &mut MemberState,
    op_id: &str,
    body: &[u8],
    ctx: &Context,
    now_ms: i64,
) -> CoreResult<Done> {
    let sv = rules.engagement.stored_value.as_ref().ok_or_else(|| refused("op", "stored value is not configured ([stored_value])"))?;
    let req: StoredValueRequest = parse(body, "member_id, amount_fen, and channel (top-up), bu_id, merchant_id, category (payment) or payment_id (refund)")?;
    check_id("member_id", &req.member_id)?;
    if !(1..=MAX_AMOUNT_FEN).contains(&req.amount_fen) {
        return Err(invalid("amount_fen", "must be a positive integer number of fen"));
    }
    let amount = req.amount_fen;
    let id_of = |field: &str, v: &Option<String>| -> CoreResult<String> {
        let v = v.as_deref().ok_or_else(|| invalid(field, "is required"))?;
        check_id(field, v)?;
        Ok(v.to_string())
    };
    let at = crate::events::format_instant(now_ms);
    let (kind, delta, bu, merchant, category, channel, refund_of, publish) = match op {
        "sv_topup" => {
            let channel = id_of("channel", &req.channel)?;
            if amount > sv.max_topup_fen {
                return Err(invalid("amount_fen", format!("a top-up is at most {} fen", sv.max_topup_fen)));
            }
            if state.sv_fen + amount > sv.max_balance_fen {
                return Err(refused("amount_fen", format!("the balance would exceed {} fen (it is {} fen)", sv.max_balance_fen, state.sv_fen)));
            }
            ("topup", amount, String::new(), String::new(), String::new(), channel, String::new(), None)
        }
        "sv_pay" => {
            let (bu, merchant, category) = (id_of("bu_id", &req.bu_id)?, id_of("merchant_id", &req.merchant_id)?, id_of("category", &req.category)?);
            if !rules.business_units.contains_key(&bu) {
                return Err(invalid("bu_id", format!("unknown business unit {bu:?}")));
            }
            if state.sv_fen < amount {
                return Err(refused("amount_fen", format!("insufficient stored value: {} fen, the payment is {amount} fen", state.sv_fen)));
            }
            // The payment itself goes through the accrual pipeline, on channel stored_value.
            let p = json!({"event_id": op_id, "type": "payment", "occurred_at": at, "member_id": req.member_id,
                           "bu_id": bu, "merchant_id": merchant, "category": category, "amount_fen": amount,
                           "channel": "stored_value"});
            ("pay", -amount, bu, merchant, category, "stored_value".to_string(), String::new(), Some(p.to_string()))
        }
        _ => {
            let payment_id = id_of("payment_id", &req.payment_id)?;
            let o = ctx.original.as_ref().ok_or_else(|| refused("payment_id", format!("no stored-value payment {payment_id:?} of member {:?}", req.member_id)))?;
            let left = o.amount_fen - o.refunded_fen;
            if amount > left {
                return Err(refused("amount_fen", format!("refund of {amount} fen exceeds the {left} fen not yet refunded of {payment_id:?}")));
            }
            let p = json!({"event_id": op_id, "type": "refund", "occurred_at": at, "member_id": req.member_id,
                           "refund_of": payment_id, "bu_id": o.bu_id, "merchant_id": o.merchant_id,
                           "category": o.category, "amount_fen": amount, "channel": "stored_value"});
            ("refund", amount, o.bu_id.clone(), o.merchant_id.clone(), o.category.clone(), "stored_value".to_string(),
             payment_id, Some(p.to_string()))
        }
    };
    state.sv_fen += delta;
    // Money lines: a top-up puts money from the gateway in the stored-value float; a
    // payment hands it to the payment (whose own lines pay the merchant); a refund back.
    let lines = vec![Line::money("gateway", -delta), Line::money("sv_float", delta)];
    let row = json!({
        "table": "stored_value", "event_id": op_id, "member_id": req.member_id, "kind": kind, "amount_fen": delta,
        "balance_after_fen": state.sv_fen, "bu_id": bu, "merchant_id": merchant, "category": category,
        "channel": channel, "refund_of": refund_of, "occurred_at_ms": now_ms, "processed_at_ms": now_ms,
        "settlement": lines,
    });
    let result = json!({"operation_id": op_id, "member_id": req.member_id, "kind": kind, "amount_fen": amount,
                        "balance_fen": state.sv_fen, "bu_id": bu, "merchant_id": merchant, "category": category,
                        "payment_id": if refund_of.is_empty() { json!(null) } else { json!(refund_of) },
                        // The payment or refund event sent to accrual (sent again on a retry).
                        "event": publish.as_deref().map(|p| serde_json::from_str::<Value>(p).expect("built above"))});
    Ok(Done {
        points: 0,
        sv_fen: delta,
        amount_fen: if kind == "topup" { 0 } else { amount },
        refund_of: (kind == "refund").then(|| format!("sv:{refund_of}")),
        rows_json: format!("[{row}]"),
        result_json: result.to_string(),
        consumed: Vec::new(),
        publish,
    })
}

// ---- where points were earned (burn-side promotions) ---------------------------------

/// Keeps an earning for the burn-side promotions that look at where points were earned.
pub fn note_earned(rules: &RuleSet, state: &mut MemberState, event_id: &str, bu_id: &str, day: i64, points: i64) {
    let window = rules.engagement.origin_window_days;
    if window == 0 {
        return;
    }
    state.earned_recent.retain(|e| e.day > day - window && e.points > 0);
    let format = rules.business_units.get(bu_id).map(|b| b.format.as_str());
    let wanted = rules.engagement.burn_promotions.iter().any(|p| {
        p.earned_bus.as_ref().is_some_and(|s| s.contains(bu_id))
            || p.earned_formats.as_ref().is_some_and(|s| format.is_some_and(|f| s.contains(f)))
    });
    if wanted && points > 0 {
        state.earned_recent.push(Earned { event_id: event_id.to_string(), day, bu: bu_id.to_string(), points });
    }
}

/// A refund takes its points out of the promotion pocket too.
pub fn unnote_earned(state: &mut MemberState, payment_id: &str, points: i64) {
    if let Some(e) = state.earned_recent.iter_mut().find(|e| e.event_id == payment_id) {
        e.points = (e.points - points).max(0);
    }
    state.earned_recent.retain(|e| e.points > 0);
}
