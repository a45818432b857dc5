//! Real-time marketing: coupon templates, the member's coupon wallet, and the
//! triggers that issue coupons as events are applied. Pure: the engine calls
//! `after_event` with the member's state; issued, redeemed, returned and expired
//! coupons come back as coupon rows that travel with the event's ledger rows (so a
//! replay re-sends them) and become ClickHouse history and pushes downstream.

use crate::errors::{CoreError, CoreResult};
use crate::events::{EventKind, PaymentEvent};
use crate::rules::RuleSet;
use crate::state::{Coupon, MemberState};
use crate::time::{Local, DAY_MS};
use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;

pub use crate::coupon_rules::{CouponKind, CouponTemplate, Scope, Trigger, TriggerKind, Validity};

/// Budget ids shared with campaign budgets (one atomic Lua step consumes them).
pub fn trigger_budget_id(trigger: &str) -> String {
    format!("trigger:{trigger}")
}

pub fn stock_budget_id(template: &str) -> String {
    format!("stock:{template}")
}

/// A coupon id that a redelivered event reproduces exactly (FNV-1a of event and trigger).
pub fn coupon_id(event_id: &str, trigger: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in event_id.bytes().chain([0u8]).chain(trigger.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("cp{h:016x}")
}

/// One coupon event: a ClickHouse row of `coupon_events` and, when issued, a push.
#[derive(Debug, Clone, Serialize)]
pub struct CouponRow {
    pub event_id: String,
    pub member_id: String,
    pub table: &'static str,
    /// issued | redeemed | returned | expired | refused
    pub kind: &'static str,
    pub coupon_id: String,
    pub template: String,
    pub trigger: String,
    pub coupon_kind: &'static str,
    pub face_value_fen: i64,
    pub discount_fen: i64,
    pub merchant_share_fen: i64,
    pub issuer_share_fen: i64,
    pub valid_until_ms: i64,
    pub occurred_at_ms: i64,
    pub processed_at_ms: i64,
    pub rules_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Where a redemption (or its return) happened, and its settlement lines: the
    /// business unit pays the merchant the share of the discount the merchant does not bear.
    pub bu_id: String,
    pub merchant_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub settlement: Vec<crate::settlement::Line>,
}

fn face_value(kind: &CouponKind) -> i64 {
    match kind {
        CouponKind::PercentOff { max_off_fen, .. } => *max_off_fen,
        CouponKind::AmountOff { off_fen } => *off_fen,
        CouponKind::Item { value_fen, .. } => *value_fen,
        CouponKind::Parking { .. } => 0,
    }
}

/// Where a coupon row happens: which member, event, time and rules.
pub struct At<'a> {
    pub rules: &'a RuleSet,
    pub member_id: &'a str,
    pub event_id: &'a str,
    pub at_ms: i64,
    pub now_ms: i64,
}

impl At<'_> {
    fn row(&self, kind: &'static str, c: &Coupon) -> CouponRow {
        CouponRow::new(kind, c, self.rules.coupon_templates.get(&c.template), self)
    }
}

impl CouponRow {
    fn new(kind: &'static str, c: &Coupon, tpl: Option<&CouponTemplate>, at: &At) -> CouponRow {
        let (rules, at_ms, now_ms) = (at.rules, at.at_ms, at.now_ms);
        CouponRow {
            event_id: at.event_id.to_string(),
            member_id: at.member_id.to_string(),
            table: "coupon_events",
            kind,
            coupon_id: c.id.clone(),
            template: c.template.clone(),
            trigger: c.trigger.clone(),
            coupon_kind: tpl.map_or("", |t| t.kind.as_str()),
            face_value_fen: tpl.map_or(0, |t| face_value(&t.kind)),
            discount_fen: 0,
            merchant_share_fen: 0,
            issuer_share_fen: 0,
            valid_until_ms: c.valid_until_ms,
            occurred_at_ms: at_ms,
            processed_at_ms: now_ms,
            rules_version: rules.version.clone(),
            reason: String::new(),
            bu_id: c.bu_id.clone(),
            merchant_id: c.merchant_id.clone(),
            settlement: Vec::new(),
        }
    }
}

/// The row of a coupon issued outside the triggers (a game's prize).
pub fn issued_row(at: &At, c: &Coupon) -> CouponRow {
    at.row("issued", c)
}

/// What the engine knew before it applied the event.
pub struct Before {
    pub tier_id: String,
    pub tier_rank: usize,
}

/// What happened, for the triggers.
pub struct Happened<'a> {
    pub event_id: &'a str,
    pub member_id: &'a str,
    pub at_ms: i64,
    pub payment: Option<&'a PaymentEvent>,
    pub registered: bool,
    pub reminder: bool,
    pub parking_exit: bool,
    pub tier_after: (&'a str, usize),
    /// An operator's grant to an audience or a scheduled campaign's coupon: (template,
    /// trigger: `audience:<send>` or `campaign:<id>:<run>`).
    pub grant: Option<(&'a str, &'a str)>,
}

fn tier_rank(rules: &RuleSet, id: &str) -> usize {
    rules.tiers.iter().position(|t| t.id == id).unwrap_or(0)
}

pub fn before(rules: &RuleSet, state: &MemberState, at_ms: i64) -> Before {
    let tier = crate::tiers::effective_tier(rules, state, at_ms);
    Before { tier_id: tier.id.clone(), tier_rank: tier_rank(rules, &tier.id) }
}

/// Marks coupons past their validity as expired; rows for each.
pub fn expire(at: &At, state: &mut MemberState) -> Vec<CouponRow> {
    let mut rows = Vec::new();
    for c in state.coupons.iter_mut().filter(|c| c.status == "active" && c.valid_until_ms <= at.at_ms) {
        c.status = "expired".into();
        rows.push(at.row("expired", c));
    }
    rows
}

/// Runs every trigger on an applied event: issues coupons (state, budgets) and
/// returns their rows, plus the budget each consumed (id, 1).
pub fn after_event(
    rules: &RuleSet,
    h: &Happened,
    before: &Before,
    state: &mut MemberState,
    budget_spent: &mut HashMap<String, i64>,
    now_ms: i64,
) -> (Vec<CouponRow>, Vec<(String, i64)>) {
    let mut rows = Vec::new();
    let mut consumed = Vec::new();
    if let Some((template, trigger)) = h.grant {
        if let Some(c) = grant(rules, template, trigger, h, state, budget_spent) {
            let at = At { rules, member_id: h.member_id, event_id: h.event_id, at_ms: h.at_ms, now_ms };
            rows.push(at.row("issued", &c));
            consumed.push((stock_budget_id(&c.template), 1));
        }
    }
    if rules.triggers.is_empty() {
        note_payment(rules, h, state);
        return (rows, consumed);
    }
    let local = Local::of(h.at_ms, rules.utc_offset_minutes);
    let format = h.payment.and_then(|p| rules.business_units.get(&p.bu_id)).map(|b| b.format.as_str());
    let paying = h.payment.is_some_and(|p| p.kind == EventKind::Payment);
    for t in &rules.triggers {
        let fired = match &t.kind {
            TriggerKind::Register => h.registered,
            TriggerKind::WinBack { dormant_days } => {
                paying && state.last_paid_ms.is_some_and(|last| h.at_ms - last >= dormant_days * DAY_MS)
            }
            TriggerKind::Spend { min_amount_fen } => paying && h.payment.is_some_and(|p| p.amount_fen >= *min_amount_fen),
            TriggerKind::SpendWindow { min_total_fen, window_days } => {
                paying && {
                    let from = local.day - window_days + 1;
                    let before_total: i64 = state.spend_days.iter().filter(|d| d[0] >= from).map(|d| d[1]).sum();
                    let amount = h.payment.map_or(0, |p| p.amount_fen);
                    // Fires when this payment takes the window's total across the line.
                    before_total < *min_total_fen && before_total + amount >= *min_total_fen
                }
            }
            TriggerKind::ParkingExit => h.parking_exit,
            TriggerKind::BirthdayMonth => {
                state.birthday_month() == Some(local.month) && state.birthday_coupon_year != local.year
            }
            TriggerKind::TierUpgrade { to } => {
                h.tier_after.1 > before.tier_rank
                    && h.tier_after.0 != before.tier_id
                    && to.as_ref().is_none_or(|s| s.contains(h.tier_after.0))
            }
            TriggerKind::PointsExpiring => h.reminder,
            TriggerKind::FirstFormat { formats } => {
                paying
                    && format.is_some_and(|f| {
                        !state.formats_seen.iter().any(|s| s == f) && formats.as_ref().is_none_or(|s| s.contains(f))
                    })
                    // A member's very first payment is not "another" format.
                    && !state.formats_seen.is_empty()
            }
        };
        if !fired {
            continue;
        }
        if t.tiers.as_ref().is_some_and(|s| !s.contains(h.tier_after.0))
            || t.tags.as_ref().is_some_and(|s| !state.has_any_tag(s))
        {
            continue;
        }
        if let Some(c) = issue(rules, t, h, state, budget_spent) {
            let tpl = rules.coupon_templates.get(&c.template);
            let at = At { rules, member_id: h.member_id, event_id: h.event_id, at_ms: h.at_ms, now_ms };
            rows.push(at.row("issued", &c));
            consumed.push((trigger_budget_id(&t.id), 1));
            if tpl.is_some_and(|t| t.stock.is_some()) {
                consumed.push((stock_budget_id(&c.template), 1));
            }
            if t.kind == TriggerKind::BirthdayMonth {
                state.birthday_coupon_year = local.year;
            }
        }
    }
    note_payment(rules, h, state);
    (rows, consumed.into_iter().filter(|(id, _)| budgeted(rules, id)).collect())
}

fn budgeted(rules: &RuleSet, id: &str) -> bool {
    if let Some(t) = id.strip_prefix("trigger:") {
        rules.triggers.iter().any(|x| x.id == t && x.budget.is_some())
    } else if let Some(t) = id.strip_prefix("stock:") {
        rules.coupon_templates.get(t).is_some_and(|x| x.stock.is_some())
    } else {
        false
    }
}

/// What later triggers need to know about this payment (last visit, formats, spend by day).
fn note_payment(rules: &RuleSet, h: &Happened, state: &mut MemberState) {
    let Some(p) = h.payment.filter(|p| p.kind == EventKind::Payment) else { return };
    state.last_paid_ms = Some(state.last_paid_ms.map_or(h.at_ms, |l| l.max(h.at_ms)));
    if let Some(bu) = rules.business_units.get(&p.bu_id) {
        if !state.formats_seen.iter().any(|f| f == &bu.format) {
            state.formats_seen.push(bu.format.clone());
        }
    }
    let longest = rules
        .triggers
        .iter()
        .filter_map(|t| match t.kind {
            TriggerKind::SpendWindow { window_days, .. } => Some(window_days),
            _ => None,
        })
        .max();
    if let Some(window) = longest {
        let day = Local::of(h.at_ms, rules.utc_offset_minutes).day;
        match state.spend_days.iter_mut().find(|d| d[0] == day) {
            Some(d) => d[1] += p.amount_fen,
            None => state.spend_days.push([day, p.amount_fen]),
        }
        state.spend_days.retain(|d| d[0] > day - window);
    }
}

/// An audience send's coupon (trigger `audience:<send id>`), once per member and send,
/// unless the template is unknown, the member limit is reached or its stock is gone.
fn grant(
    rules: &RuleSet,
    template: &str,
    trigger: &str,
    h: &Happened,
    state: &mut MemberState,
    budget_spent: &mut HashMap<String, i64>,
) -> Option<Coupon> {
    let tpl = rules.coupon_templates.get(template)?;
    let trigger = trigger.to_string();
    if state.coupons.iter().any(|c| c.trigger == trigger) {
        return None;
    }
    if at_member_limit(tpl, state) {
        return None;
    }
    let stock = stock_budget_id(&tpl.id);
    if let Some(limit) = tpl.stock {
        if budget_spent.get(&stock).copied().unwrap_or(0) >= limit {
            return None;
        }
        *budget_spent.entry(stock).or_insert(0) += 1;
    }
    Some(put_coupon(state, tpl, coupon_id(h.event_id, &trigger), trigger, h.at_ms))
}

/// A new active coupon of `tpl` in the member's wallet, valid as the template says.
fn put_coupon(state: &mut MemberState, tpl: &CouponTemplate, id: String, trigger: String, at_ms: i64) -> Coupon {
    let (valid_from_ms, valid_until_ms) = match tpl.validity {
        Validity::Days(d) => (at_ms, at_ms + d * DAY_MS),
        Validity::Fixed { from_ms, to_ms } => (from_ms, to_ms),
    };
    let c = Coupon {
        id,
        template: tpl.id.clone(),
        trigger,
        issued_at_ms: at_ms,
        valid_from_ms,
        valid_until_ms,
        status: "active".into(),
        ..Coupon::default()
    };
    state.coupons.push(c.clone());
    prune(state);
    c
}

/// Whether the member holds as many coupons of `tpl` as it allows one member.
fn at_member_limit(tpl: &CouponTemplate, state: &MemberState) -> bool {
    tpl.per_member_limit
        .is_some_and(|limit| state.coupons.iter().filter(|c| c.template == tpl.id).count() as i64 >= limit)
}

/// Issues the trigger's coupon unless a cap, the member limit, the trigger's budget
/// or the template's stock says no.
fn issue(
    rules: &RuleSet,
    t: &Trigger,
    h: &Happened,
    state: &mut MemberState,
    budget_spent: &mut HashMap<String, i64>,
) -> Option<Coupon> {
    let tpl = rules.coupon_templates.get(&t.coupon)?;
    if let Some((max, per_days)) = t.cap {
        let since = if per_days == 0 { i64::MIN } else { h.at_ms - per_days * DAY_MS };
        let recent = state.coupons.iter().filter(|c| c.trigger == t.id && c.issued_at_ms > since).count() as i64;
        if recent >= max {
            return None;
        }
    }
    if at_member_limit(tpl, state) {
        return None;
    }
    let id = coupon_id(h.event_id, &t.id);
    if state.coupons.iter().any(|c| c.id == id) {
        return None;
    }
    for (bid, limit) in [(trigger_budget_id(&t.id), t.budget), (stock_budget_id(&tpl.id), tpl.stock)] {
        if let Some(limit) = limit {
            if budget_spent.get(&bid).copied().unwrap_or(0) >= limit {
                return None;
            }
        }
    }
    if !cap_allows(rules, state, h.at_ms) {
        return None;
    }
    for (bid, limit) in [(trigger_budget_id(&t.id), t.budget), (stock_budget_id(&tpl.id), tpl.stock)] {
        if limit.is_some() {
            *budget_spent.entry(bid).or_insert(0) += 1;
        }
    }
    note_push(rules, state, h.at_ms);
    Some(put_coupon(state, tpl, id, t.id.clone(), h.at_ms))
}

/// Whether `[frequency_cap]` lets the member be pushed one more thing at `at_ms` (the
/// pushes older than its window are forgotten on the way).
pub fn cap_allows(rules: &RuleSet, state: &mut MemberState, at_ms: i64) -> bool {
    let Some(cap) = rules.engagement.frequency_cap else { return true };
    let from = at_ms - cap.days * DAY_MS;
    state.pushes_at.retain(|t| *t > from);
    (state.pushes_at.iter().filter(|t| **t <= at_ms).count() as i64) < cap.pushes
}

/// Counts a push toward `[frequency_cap]` (kept only when the rules have one).
pub fn note_push(rules: &RuleSet, state: &mut MemberState, at_ms: i64) {
    if let Some(cap) = rules.engagement.frequency_cap {
        let at = state.pushes_at.partition_point(|t| *t <= at_ms);
        state.pushes_at.insert(at, at_ms);
        // Bounded: never more than the cap's count (plus later pushes) is needed.
        let keep = cap.pushes as usize + 8;
        if state.pushes_at.len() > keep {
            state.pushes_at.drain(..state.pushes_at.len() - keep);
        }
    }
}

/// What a scheduled campaign's push does for one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CampaignOutcome {
    /// Issue a coupon of `template` with trigger `trigger` (after_event does, within its stock).
    Coupon { template: String, trigger: String },
    /// Push this notice (JSON).
    Notice(String),
    /// Nothing pushed, and why: `not_in_rules`, `ended`, `reached_this_dormancy`,
    /// `paid_since`, `frequency_cap`, `member_limit`.
    Skipped(&'static str),
}

/// A scheduled campaign's push to a member (event `campaign_push`): the checks that
/// hold it (the campaign still in the rules, a win-back once per dormancy and not to a
/// member who paid meanwhile, the template's per-member limit, the frequency cap), then
/// the member marked reached and the push counted.
pub fn campaign_push(
    rules: &RuleSet,
    member_id: &str,
    event_id: &str,
    campaign_run: (&str, &str),
    state: &mut MemberState,
    at_ms: i64,
) -> CampaignOutcome {
    use crate::engage_rules::CampaignAction;
    let (cid, run) = campaign_run;
    let Some(c) = rules.engagement.scheduled.iter().find(|c| c.id == cid) else {
        return CampaignOutcome::Skipped("not_in_rules");
    };
    if c.to_ms.is_some_and(|to| at_ms >= to + DAY_MS) {
        return CampaignOutcome::Skipped("ended");
    }
    if c.once_per_dormancy {
        let last_paid = state.last_paid_ms.unwrap_or(i64::MIN);
        if state.campaigns_reached.get(cid).is_some_and(|r| *r >= last_paid) {
            return CampaignOutcome::Skipped("reached_this_dormancy");
        }
        if state.last_paid_ms.is_some_and(|p| at_ms - p < c.audience.dormant_days * DAY_MS) {
            return CampaignOutcome::Skipped("paid_since");
        }
    }
    if let CampaignAction::Coupon { template } = &c.action {
        if rules.coupon_templates.get(template).is_none_or(|tpl| at_member_limit(tpl, state)) {
            return CampaignOutcome::Skipped("member_limit");
        }
    }
    if c.capped {
        if !cap_allows(rules, state, at_ms) {
            return CampaignOutcome::Skipped("frequency_cap");
        }
        note_push(rules, state, at_ms);
    }
    state.campaigns_reached.insert(cid.to_string(), at_ms);
    state.campaigns_reached.retain(|id, _| rules.engagement.scheduled.iter().any(|c| &c.id == id));
    match &c.action {
        CampaignAction::Coupon { template } => {
            CampaignOutcome::Coupon { template: template.clone(), trigger: format!("campaign:{cid}:{run}") }
        }
        CampaignAction::Notice { message } => CampaignOutcome::Notice(
            serde_json::json!({
                "push_id": format!("campaign:{cid}:{run}:{member_id}"), "kind": "campaign_notice",
                "member_id": member_id, "event_id": event_id, "campaign": cid, "run": run,
                "name": c.name, "message": message, "occurred_at_ms": at_ms,
            })
            .to_string(),
        ),
    }
}

/// The wallet keeps every active coupon and the 50 newest others.
fn prune(state: &mut MemberState) {
    let inactive = state.coupons.iter().filter(|c| c.status != "active").count();
    if inactive > 50 {
        let mut drop = inactive - 50;
        state.coupons.retain(|c| {
            if drop > 0 && c.status != "active" {
                drop -= 1;
                false
            } else {
                true
            }
        });
    }
}

/// Where and how much a redemption is for.
pub struct Use<'a> {
    pub bu_id: &'a str,
    pub merchant_id: &'a str,
    pub category: &'a str,
    /// What the member paid (after the discount).
    pub paid_fen: i64,
    pub at_ms: i64,
}

/// The discount of a coupon on a payment of `paid_fen` (after the discount).
fn discount(kind: &CouponKind, paid_fen: i64) -> i64 {
    match kind {
        CouponKind::PercentOff { pct, max_off_fen } => {
            // paid = gross * (100 - pct) / 100  =>  discount = paid * pct / (100 - pct)
            let d = (paid_fen as i128 * *pct as i128 / (100 - *pct) as i128) as i64;
            if *max_off_fen > 0 { d.min(*max_off_fen) } else { d }
        }
        CouponKind::AmountOff { off_fen } => *off_fen,
        CouponKind::Item { value_fen, .. } => *value_fen,
        CouponKind::Parking { .. } => 0,
    }
}

/// Checks that `member`'s coupon `coupon_id` can pay for `u`: the owner's, active,
/// within its validity, over the threshold, in scope. RejectedEventError names why.
pub fn check(rules: &RuleSet, state: &MemberState, coupon_id: &str, u: &Use) -> CoreResult<i64> {
    let refuse = |reason: String| Err(CoreError::rejected("coupon_ids", reason));
    let Some(c) = state.coupons.iter().find(|c| c.id == coupon_id) else {
        return refuse(format!("coupon {coupon_id} is not this member's"));
    };
    match c.status.as_str() {
        "active" => {}
        "used" => return refuse(format!("coupon {coupon_id} is used already")),
        "expired" => return refuse(format!("coupon {coupon_id} has expired")),
        other => return refuse(format!("coupon {coupon_id} is {other}")),
    }
    if u.at_ms < c.valid_from_ms {
        return refuse(format!("coupon {coupon_id} is not valid yet"));
    }
    if u.at_ms >= c.valid_until_ms {
        return refuse(format!("coupon {coupon_id} has expired"));
    }
    let Some(tpl) = rules.coupon_templates.get(&c.template) else {
        return refuse(format!("coupon {coupon_id}: template {} is no longer in the rules", c.template));
    };
    let s = &tpl.scope;
    if s.bus.as_ref().is_some_and(|x| !x.contains(u.bu_id))
        || s.merchants.as_ref().is_some_and(|x| !x.contains(u.merchant_id))
        || s.categories.as_ref().is_some_and(|x| !x.contains(u.category))
    {
        return refuse(format!("coupon {coupon_id} is not valid at {} / {} / {}", u.bu_id, u.merchant_id, u.category));
    }
    let d = discount(&tpl.kind, u.paid_fen);
    if u.paid_fen + d < tpl.threshold_fen {
        return refuse(format!(
            "coupon {coupon_id} needs a spend of {} fen, this one is {} fen",
            tpl.threshold_fen,
            u.paid_fen + d
        ));
    }
    Ok(d)
}

/// Redeems a coupon (after `check`): marks it used by `by` and returns its row.
pub fn redeem(at: &At, state: &mut MemberState, coupon_id: &str, u: &Use) -> CoreResult<CouponRow> {
    let d = check(at.rules, state, coupon_id, u)?;
    let c = state.coupons.iter_mut().find(|c| c.id == coupon_id).expect("checked above");
    c.status = "used".into();
    c.used_by = Some(at.event_id.to_string());
    c.bu_id = u.bu_id.to_string();
    c.merchant_id = u.merchant_id.to_string();
    let tpl = at.rules.coupon_templates.get(&c.template);
    let merchant_pct = tpl.map_or(0, |t| t.merchant_share_pct);
    c.discount_fen = d;
    // The merchant's share, rounded as the rules round splits; the issuer pays the rest.
    c.issuer_share_fen = d - at.rules.settlement.split_rounding.share(d, merchant_pct, 100);
    let mut row = CouponRow::new("redeemed", c, tpl, at);
    row.discount_fen = d;
    row.merchant_share_fen = d - c.issuer_share_fen;
    row.issuer_share_fen = c.issuer_share_fen;
    row.settlement = subsidy_lines(c, 1);
    Ok(row)
}

/// The row of a coupon a payment named but could not use (the payment still counts).
pub fn refused(at: &At, coupon_id: &str, reason: &str) -> CouponRow {
    let c = Coupon {
        id: coupon_id.to_string(),
        template: String::new(),
        trigger: String::new(),
        issued_at_ms: 0,
        valid_from_ms: 0,
        valid_until_ms: 0,
        status: "refused".into(),
        ..Coupon::default()
    };
    let mut row = CouponRow::new("refused", &c, None, at);
    row.reason = reason.to_string();
    row
}

/// Coupons used by payment `payment_id` come back when it is refunded in full, if
/// still valid then.
pub fn give_back(at: &At, state: &mut MemberState, payment_id: &str) -> Vec<CouponRow> {
    let mut rows = Vec::new();
    for c in state.coupons.iter_mut() {
        if c.status == "used" && c.used_by.as_deref() == Some(payment_id) && at.at_ms < c.valid_until_ms {
            let mut row = at.row("returned", c);
            row.discount_fen = -c.discount_fen;
            row.issuer_share_fen = -c.issuer_share_fen;
            row.merchant_share_fen = -(c.discount_fen - c.issuer_share_fen);
            row.settlement = subsidy_lines(c, -1);
            c.status = "active".into();
            c.used_by = None;
            c.discount_fen = 0;
            c.issuer_share_fen = 0;
            rows.push(row);
        }
    }
    rows
}

/// The member's parking coupon to use at car park `bu` at `at_ms`: the active one in scope
/// with the most minutes (the soonest to expire among equals); (coupon id, minutes).
pub fn parking_coupon(rules: &RuleSet, state: &MemberState, bu: &str, at_ms: i64) -> Option<(String, i64)> {
    state
        .coupons
        .iter()
        .filter(|c| c.status == "active" && c.valid_from_ms <= at_ms && at_ms < c.valid_until_ms)
        .filter_map(|c| {
            let tpl = rules.coupon_templates.get(&c.template)?;
            let CouponKind::Parking { minutes } = tpl.kind else { return None };
            tpl.scope.bus.as_ref().is_none_or(|s| s.contains(bu)).then_some((c, minutes))
        })
        .max_by_key(|(c, minutes)| (*minutes, -c.valid_until_ms))
        .map(|(c, minutes)| (c.id.clone(), minutes))
}

/// The business unit pays the merchant its share of the discount (`sign` -1: reversed).
fn subsidy_lines(c: &Coupon, sign: i64) -> Vec<crate::settlement::Line> {
    use crate::settlement::Line;
    if c.issuer_share_fen == 0 {
        return Vec::new();
    }
    vec![
        Line::money(format!("bu:{}", c.bu_id), -sign * c.issuer_share_fen),
        Line::money(format!("merchant:{}", c.merchant_id), sign * c.issuer_share_fen),
    ]
}

/// The coupon rows of an event as JSON objects to append to its ledger rows.
pub fn rows_json(rows: &[CouponRow]) -> Vec<String> {
    rows.iter().map(|r| serde_json::to_string(r).expect("coupon rows serialise")).collect()
}

/// A redemption at the till through the endpoint: which coupon, for which payment.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTillRedemption {
    member_id: String,
    coupon_id: String,
    /// The event id the till's payment callback will carry (with this coupon in coupon_ids).
    payment_id: String,
    bu_id: String,
    merchant_id: String,
    category: String,
    /// What the member pays after the discount, in fen.
    amount_fen: i64,
    occurred_at: String,
}

/// Redeems a coupon at the till (the endpoint): `(changed, result JSON, rows)`; `changed`
/// is false when this coupon was redeemed for this payment already (a retry).
pub fn redeem_at_till(rules: &RuleSet, state: &mut MemberState, body: &[u8], now_ms: i64)
    -> CoreResult<(bool, String, Vec<CouponRow>)> {
    let r: RawTillRedemption = serde_json::from_slice(body).map_err(|e| {
        CoreError::invalid_event("body", format!("{e} (member_id, coupon_id, payment_id, bu_id, merchant_id, \
                                                  category, amount_fen, occurred_at)"))
    })?;
    for (field, v) in [("member_id", &r.member_id), ("coupon_id", &r.coupon_id), ("payment_id", &r.payment_id),
                       ("bu_id", &r.bu_id), ("merchant_id", &r.merchant_id), ("category", &r.category)] {
        crate::events::check_id(field, v)?;
    }
    if !(1..=crate::events::MAX_AMOUNT_FEN).contains(&r.amount_fen) {
        return Err(CoreError::invalid_event("amount_fen", "must be a positive number of fen"));
    }
    let at_ms = crate::events::parse_instant("occurred_at", &r.occurred_at)?;
    let answer = |c: &Coupon, discount: i64| {
        serde_json::json!({"coupon_id": c.id, "template": c.template, "status": c.status,
                           "payment_id": r.payment_id, "discount_fen": discount}).to_string()
    };
    if let Some(c) = state.coupons.iter().find(|c| c.id == r.coupon_id && c.used_by.as_deref() == Some(&r.payment_id)) {
        let tpl = rules.coupon_templates.get(&c.template);
        let d = tpl.map_or(0, |t| discount(&t.kind, r.amount_fen));
        return Ok((false, answer(c, d), Vec::new()));
    }
    let at = At { rules, member_id: &r.member_id, event_id: &r.payment_id, at_ms, now_ms };
    // A merchant's configured category replaces the one its till sends (as for payments).
    let category = rules.category_of(&r.merchant_id, &r.category);
    let u = Use { bu_id: &r.bu_id, merchant_id: &r.merchant_id, category, paid_fen: r.amount_fen, at_ms };
    let row = redeem(&at, state, &r.coupon_id, &u)?;
    let c = state.coupons.iter().find(|c| c.id == r.coupon_id).expect("redeemed above");
    Ok((true, answer(c, row.discount_fen), vec![row]))
}

/// The member's coupons with what their templates say, newest first, as JSON.
pub fn wallet_json(rules: &RuleSet, state: &MemberState, now_ms: i64) -> String {
    let mut out: Vec<serde_json::Value> = state
        .coupons
        .iter()
        .map(|c| {
            let tpl = rules.coupon_templates.get(&c.template);
            let status = if c.status == "active" && c.valid_until_ms <= now_ms { "expired" } else { c.status.as_str() };
            serde_json::json!({
                "coupon_id": c.id, "template": c.template, "trigger": c.trigger, "status": status,
                "kind": tpl.map_or("", |t| t.kind.as_str()),
                "face_value_fen": tpl.map_or(0, |t| face_value(&t.kind)),
                "threshold_fen": tpl.map_or(0, |t| t.threshold_fen),
                "percent_off": tpl.and_then(|t| match t.kind { CouponKind::PercentOff { pct, .. } => Some(pct), _ => None }),
                "item": tpl.and_then(|t| match &t.kind { CouponKind::Item { item, .. } => Some(item.clone()), _ => None }),
                "parking_minutes": tpl.and_then(|t| match t.kind { CouponKind::Parking { minutes } => Some(minutes), _ => None }),
                "issued_at_ms": c.issued_at_ms, "valid_from_ms": c.valid_from_ms, "valid_until_ms": c.valid_until_ms,
                "used_by": c.used_by,
            })
        })
        .collect();
    out.reverse();
    serde_json::Value::Array(out).to_string()
}
