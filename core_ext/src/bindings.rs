//! The only module that touches Python objects. Converts once per batch at the
//! boundary and releases the GIL while the pure core works.

use crate::errors::CoreError;
use crate::events::{self, Event};
use crate::rules::RuleSet;
use crate::state::MemberState;
use crate::tiers;
use crate::time::Local;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use std::sync::Arc;

create_exception!(
    _core,
    LoyaltyError,
    PyException,
    "Root of every error the engine raises: the core's (LoyaltyCoreError) and the service's (streams.errors)."
);
create_exception!(_core, LoyaltyCoreError, LoyaltyError, "Base class of every error raised by the loyalty core.");
create_exception!(
    _core,
    InvalidEventError,
    LoyaltyCoreError,
    "An event body that cannot be accepted; `.field` and `.reason` say why."
);
create_exception!(
    _core,
    RulesError,
    LoyaltyCoreError,
    "A rule set that cannot be loaded; `.file`, `.line`, `.field` and `.reason` say where and why."
);
create_exception!(
    _core,
    RejectedEventError,
    LoyaltyCoreError,
    "A well-formed event that the rules or the member's state cannot apply."
);
create_exception!(
    _core,
    CorruptStateError,
    LoyaltyCoreError,
    "A stored value (a member's state, a Redis reply) that the core cannot read: not what it wrote."
);
create_exception!(
    _core,
    InvalidArgumentError,
    LoyaltyCoreError,
    "An argument of a core call out of its range (a programming or configuration error)."
);

/// A member's stored state, or CorruptStateError saying what is wrong with it.
pub fn stored_state(state_json: Option<&str>) -> PyResult<MemberState> {
    MemberState::from_json(state_json).map_err(CorruptStateError::new_err)
}

/// Turns a core error into the matching Python exception, with its parts as attributes.
pub fn core_error_to_py(py: Python<'_>, err: CoreError) -> PyErr {
    let message = err.to_string();
    let pyerr = match &err {
        CoreError::InvalidEvent { .. } => InvalidEventError::new_err(message),
        CoreError::InvalidRules { .. } => RulesError::new_err(message),
        CoreError::Rejected { .. } => RejectedEventError::new_err(message),
    };
    let value = pyerr.value(py);
    // setattr on a fresh exception instance cannot fail in practice; if it did,
    // the message still carries every part.
    let _ = value.setattr("field", err.field());
    let _ = value.setattr("reason", err.reason());
    if let CoreError::InvalidRules { file, line, .. } = &err {
        let _ = value.setattr("file", file.as_str());
        let _ = value.setattr("line", *line);
    }
    pyerr
}

/// A validated, compiled rule set.
#[pyclass(name = "RuleSet", frozen, module = "core_ext._core")]
pub struct PyRuleSet {
    pub inner: Arc<RuleSet>,
}

#[pymethods]
impl PyRuleSet {
    #[staticmethod]
    #[pyo3(signature = (text, path = "<string>"))]
    fn from_toml(py: Python<'_>, text: &str, path: &str) -> PyResult<Self> {
        RuleSet::from_toml(text, path)
            .map(|r| PyRuleSet { inner: Arc::new(r) })
            .map_err(|e| core_error_to_py(py, e))
    }

    #[getter]
    fn version(&self) -> String {
        self.inner.version.clone()
    }

    #[getter]
    fn tier_ids(&self) -> Vec<String> {
        self.inner.tiers.iter().map(|t| t.id.clone()).collect()
    }

    /// Points lots expire at the end of the month this many months after earning (None: never).
    #[getter]
    fn points_validity_months(&self) -> Option<i64> {
        self.inner.wallet.validity_months
    }

    #[getter]
    fn default_tier(&self) -> String {
        self.inner.default_tier().id.clone()
    }

    #[getter]
    fn business_units(&self) -> Vec<(String, String)> {
        let mut out: Vec<_> = self.inner.business_units.values().map(|b| (b.id.clone(), b.format.clone())).collect();
        out.sort();
        out
    }

    /// (campaign id, budget points or None), in file order.
    #[getter]
    fn campaigns(&self) -> Vec<(String, Option<i64>)> {
        self.inner.campaigns.iter().map(|c| (c.id.clone(), c.budget_points)).collect()
    }

    /// Every budget the atomic apply step checks: campaigns (points), triggers
    /// (`trigger:<id>`, coupons), coupon stocks (`stock:<template>`) and points-mall stocks
    /// (`mall:<item>`), with their limits.
    #[getter]
    fn budgets(&self) -> Vec<(String, i64)> {
        let mut all = crate::batch::budget_limits(&self.inner);
        let mut mall: Vec<(String, i64)> = self
            .inner
            .engagement
            .mall_items
            .values()
            .filter_map(|it| it.stock.map(|s| (crate::engage_rules::mall_budget_id(&it.id), s)))
            .collect();
        mall.extend(self.inner.engagement.gatherings.values().map(|g| (crate::engage_rules::seats_budget_id(&g.id), g.capacity)));
        mall.sort();
        all.extend(mall);
        all
    }

    /// The kinds of the marketing triggers in the rules (e.g. "parking_exit"), sorted.
    #[getter]
    fn trigger_kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.inner.triggers.iter().map(|t| t.kind.as_str().to_string()).collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }

    /// Coupon template ids, sorted.
    #[getter]
    fn coupon_templates(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner.coupon_templates.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Receipt points (`[receipts]`): the oldest receipt taken, in days; None when not offered.
    #[getter]
    fn receipts_max_age_days(&self) -> Option<i64> {
        self.inner.engagement.receipts.as_ref().map(|r| r.max_age_days)
    }

    /// The scheduled campaigns (`[[scheduled_campaigns]]`) as JSON: a list of objects with
    /// id, name, schedule, from_ms, to_ms, audience, action, once_per_dormancy, capped.
    #[getter]
    fn scheduled_campaigns_json(&self) -> String {
        serde_json::to_string(&self.inner.engagement.scheduled).expect("campaigns serialise")
    }

    /// The saved audiences (`[audiences.<id>]`) as JSON: an object of id -> conditions.
    #[getter]
    fn audiences_json(&self) -> String {
        serde_json::to_string(&self.inner.engagement.audiences).expect("audiences serialise")
    }

    /// `[frequency_cap]`: (pushes, days), or None.
    #[getter]
    fn frequency_cap(&self) -> Option<(i64, i64)> {
        self.inner.engagement.frequency_cap.map(|c| (c.pushes, c.days))
    }

    /// Car park business unit ids.
    #[getter]
    fn car_parks(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.car_parks.keys().cloned().collect();
        v.sort();
        v
    }

    /// The stocks an exchange of a points-mall item takes: (budget id, limit), the item's and
    /// its coupon template's (empty for an unknown item).
    fn mall_budgets(&self, item: &str) -> Vec<(String, i64)> {
        let Some(it) = self.inner.engagement.mall_items.get(item) else { return Vec::new() };
        crate::mall::budgets(&self.inner, it).into_iter().filter_map(|(id, s)| s.map(|s| (id, s))).collect()
    }

    /// The stocks a game's play may take: (budget id, units), prizes and coupon templates.
    fn game_budgets(&self, game: &str) -> Vec<(String, i64)> {
        let Some(g) = self.inner.engagement.games.get(game) else { return Vec::new() };
        let mut out = Vec::new();
        for p in &g.prizes {
            if let Some(stock) = p.stock {
                out.push((crate::engage_rules::prize_budget_id(&g.id, &p.id), stock));
            }
            if let crate::engage_rules::Reward::Coupon(t) = &p.reward {
                if let Some(stock) = self.inner.coupon_templates.get(t).and_then(|t| t.stock) {
                    out.push((crate::coupons::stock_budget_id(t), stock));
                }
            }
        }
        out
    }

    #[getter]
    fn games(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.engagement.games.keys().cloned().collect();
        v.sort();
        v
    }

    /// Leaderboards the rules define: (period "week"|"month", scope "group"|"bu").
    #[getter]
    fn leaderboards(&self) -> Vec<(&'static str, &'static str)> {
        self.inner
            .engagement
            .leaderboards
            .iter()
            .map(|b| (if b.monthly { "month" } else { "week" }, if b.per_bu { "bu" } else { "group" }))
            .collect()
    }

    #[getter]
    fn utc_offset_minutes(&self) -> i64 {
        self.inner.utc_offset_minutes
    }

    #[getter]
    fn guest_credit_days(&self) -> i64 {
        self.inner.guest_credit_days
    }

    fn __repr__(&self) -> String {
        format!(
            "RuleSet(version={:?}, business_units={}, merchants={}, tiers={}, campaigns={})",
            self.inner.version,
            self.inner.business_units.len(),
            self.inner.merchants.len(),
            self.inner.tiers.len(),
            self.inner.campaigns.len()
        )
    }
}

/// Validates one raw payment or refund body; returns
/// `(event_id, member_id or None, type, payer (kind, id) or None)`. With `now_ms`, its
/// time must be within `max_age_days` before and `max_ahead_days` after it; with `rules`,
/// a payment above its merchant's or business unit's maximum is refused
/// (`RejectedEventError`, field `amount_fen`).
#[pyfunction]
#[pyo3(signature = (body, rules=None, now_ms=None, max_age_days=400, max_ahead_days=1))]
#[allow(clippy::type_complexity)]
pub fn validate_payment(
    py: Python<'_>,
    body: &[u8],
    rules: Option<&PyRuleSet>,
    now_ms: Option<i64>,
    max_age_days: i64,
    max_ahead_days: i64,
) -> PyResult<(String, Option<String>, &'static str, Option<(String, String)>)> {
    let checked = events::parse_payment_event(body).and_then(|ev| {
        if let Some(now) = now_ms {
            crate::time::check_window("occurred_at", ev.occurred_at_ms, now, max_age_days, max_ahead_days)?;
        }
        if let Some(limit) = rules
            .filter(|_| ev.kind == events::EventKind::Payment)
            .and_then(|r| r.inner.max_payment_fen(&ev.bu_id, &ev.merchant_id))
        {
            if ev.amount_fen > limit {
                return Err(CoreError::rejected(
                    "amount_fen",
                    format!(
                        "{} fen is above the maximum payment of {limit} fen at {} / {}",
                        ev.amount_fen, ev.bu_id, ev.merchant_id
                    ),
                ));
            }
        }
        Ok(ev)
    });
    checked
        .map(|ev| (ev.event_id, ev.member_id, ev.kind.as_str(), ev.payer))
        .map_err(|e| core_error_to_py(py, e))
}

/// Validates one raw member event body; returns `(event_id, member_id, type)`. With
/// `now_ms`, its time must be within the window as for payments.
#[pyfunction]
#[pyo3(signature = (body, now_ms=None, max_age_days=400, max_ahead_days=1))]
pub fn validate_member_event(
    py: Python<'_>,
    body: &[u8],
    now_ms: Option<i64>,
    max_age_days: i64,
    max_ahead_days: i64,
) -> PyResult<(String, String, &'static str)> {
    match events::parse_event(body) {
        Ok(Event::Member(m)) => {
            if let Some(now) = now_ms {
                crate::time::check_window("occurred_at", m.occurred_at_ms, now, max_age_days, max_ahead_days)
                    .map_err(|e| core_error_to_py(py, e))?;
            }
            Ok((m.event_id, m.member_id, m.kind.as_str()))
        }
        Ok(Event::Payment(_)) => Err(core_error_to_py(
            py,
            CoreError::invalid_event("type", "payments go to /v1/callbacks/payment"),
        )),
        Err(e) => Err(core_error_to_py(py, e)),
    }
}

/// Refuses (`InvalidEventError`, field `body`) a body that is not one JSON object or
/// repeats a key at any depth: every endpoint that takes JSON checks this first.
#[pyfunction]
pub fn check_json_object(py: Python<'_>, body: &[u8]) -> PyResult<()> {
    events::check_unique_keys(body).map_err(|e| core_error_to_py(py, e))
}

/// A batch of raw records (single events or envelopes of them), decoded once.
#[pyclass(name = "EventBatch", frozen, module = "core_ext._core")]
pub struct PyEventBatch {
    pub(crate) events: Vec<Result<Event, CoreError>>,
}

#[pymethods]
impl PyEventBatch {
    #[staticmethod]
    fn decode(py: Python<'_>, records: Vec<Bound<'_, PyBytes>>) -> Self {
        // Borrowed, not copied: `bytes` cannot change and `records` holds them while the
        // parse runs without the GIL.
        let refs: Vec<&[u8]> = records.iter().map(|b| b.as_bytes()).collect();
        let events = py.detach(|| {
            let mut out = Vec::with_capacity(refs.len());
            for rec in &refs {
                match crate::envelope::unpack(rec) {
                    Ok(bodies) => out.extend(bodies.into_iter().map(events::parse_event)),
                    Err(e) => out.push(Err(e)),
                }
            }
            out
        });
        PyEventBatch { events }
    }

    fn __len__(&self) -> usize {
        self.events.len()
    }
}


/// What the member API shows of a stored state: tier, progress and review date.
/// The points mall's catalogue as a member sees it now: every item with its price, kind,
/// stock left (`spent`: budget id -> units taken), window, and whether this member may buy
/// it (`can_buy`, else `why_not` and the `field` it is about), sorted by id.
#[pyfunction]
pub fn mall_catalogue<'py>(
    py: Python<'py>,
    rules: &PyRuleSet,
    state_json: Option<&str>,
    spent: std::collections::HashMap<String, i64>,
    now_ms: i64,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let state = stored_state(state_json)?;
    let r = &rules.inner;
    let mut items: Vec<&crate::engage_rules::MallItem> = r.engagement.mall_items.values().collect();
    items.sort_by(|a, b| a.id.cmp(&b.id));
    let available = crate::wallet::available(r, &state, now_ms);
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        let d = PyDict::new(py);
        let (kind, coupon) = match &it.kind {
            crate::engage_rules::MallKind::Goods => ("goods", None),
            crate::engage_rules::MallKind::Benefit => ("benefit", None),
            crate::engage_rules::MallKind::Coupon(t) => ("coupon", Some(t.clone())),
            crate::engage_rules::MallKind::Parking(t) => ("parking", Some(t.clone())),
        };
        let left = it.stock.map(|s| (s - spent.get(&crate::engage_rules::mall_budget_id(&it.id)).copied().unwrap_or(0)).max(0));
        let mut why = crate::mall::refusal(r, &state, it, now_ms);
        if why.is_none() && left == Some(0) {
            why = Some(("stock", format!("{} is out of stock", it.id)));
        }
        if why.is_none() && available < it.points {
            why = Some(("points", format!("needs {} points, the member has {available} available", it.points)));
        }
        d.set_item("item", &it.id)?;
        d.set_item("name", &it.name)?;
        d.set_item("kind", kind)?;
        d.set_item("coupon_template", coupon)?;
        d.set_item("points", it.points)?;
        d.set_item("cash_fen", (it.cash_fen > 0).then_some(it.cash_fen))?;
        d.set_item("pay_minutes", (it.cash_fen > 0).then_some(it.pay_minutes))?;
        d.set_item("stock", it.stock)?;
        d.set_item("stock_left", left)?;
        d.set_item("per_member_limit", it.per_member_limit)?;
        d.set_item("per_day_limit", it.per_day_limit)?;
        d.set_item("flash", it.flash)?;
        d.set_item("valid_from_ms", it.from_ms)?;
        d.set_item("valid_to_ms", it.to_ms)?;
        d.set_item("bu", &it.bu)?;
        let mut tiers: Option<Vec<&String>> = it.tiers.as_ref().map(|t| t.iter().collect());
        if let Some(t) = tiers.as_mut() {
            t.sort();
        }
        d.set_item("tiers", tiers)?;
        d.set_item("can_buy", why.is_none())?;
        d.set_item("why_not", why.as_ref().map(|w| w.1.clone()))?;
        d.set_item("field", why.as_ref().map(|w| w.0))?;
        out.push(d);
    }
    Ok(out)
}

/// Whether a member event (a merge's half, an erasure, an adjustment...) would apply to
/// this member's state now: nothing if it would, RejectedEventError / InvalidEventError
/// (with `field`) saying why not. Nothing is changed: the event itself is applied by the
/// accrual worker, in order with the member's other events.
#[pyfunction]
pub fn check_member_event(py: Python<'_>, rules: &PyRuleSet, state_json: Option<&str>, body: &[u8], now_ms: i64) -> PyResult<()> {
    let mut state = stored_state(state_json)?;
    let ev = match crate::events::parse_event(body).map_err(|e| core_error_to_py(py, e))? {
        crate::events::Event::Member(m) => m,
        _ => return Err(InvalidArgumentError::new_err("check_member_event takes a member event")),
    };
    crate::behaviour::apply_member_event(&rules.inner, &ev, &mut state, now_ms)
        .map(|_| ())
        .map_err(|e| core_error_to_py(py, e))
}

#[pyfunction]
#[pyo3(signature = (rules, state_json, now_ms))]
pub fn member_view<'py>(
    py: Python<'py>,
    rules: &PyRuleSet,
    state_json: Option<&str>,
    now_ms: i64,
) -> PyResult<Bound<'py, PyDict>> {
    let state = stored_state(state_json)?;
    let local = Local::of(now_ms, rules.inner.utc_offset_minutes);
    let v = tiers::view(&rules.inner, &state, local.month_index, now_ms);
    let tier = rules.inner.tier(Some(&v.tier));
    let d = PyDict::new(py);
    d.set_item("tier", v.tier)?;
    d.set_item("qualified_tier", v.qualified_tier)?;
    d.set_item("window_points", v.window_points)?;
    d.set_item("window_spend_fen", v.window_spend_fen)?;
    d.set_item("next_tier", v.next_tier)?;
    d.set_item("points_to_next", v.points_to_next)?;
    d.set_item("spend_to_next_fen", v.spend_to_next_fen)?;
    d.set_item("review_at_ms", v.review_at_ms)?;
    d.set_item("override_until_ms", v.override_until_ms)?;
    d.set_item("free_parking_minutes", tier.free_parking_minutes)?;
    d.set_item("redemption_bonus_pct", tier.redemption_bonus_pct)?;
    d.set_item("registered", state.registered_at_ms.is_some())?;
    d.set_item("birthday", state.birthday.clone())?;
    d.set_item("tags", state.tags.clone())?;
    d.set_item("segment_tags", state.segment_tags.clone())?;
    d.set_item("segment", state.segment.clone())?;
    d.set_item("sign_in_streak", state.sign_in_streak)?;
    let r = &rules.inner;
    d.set_item("available", crate::wallet::available(r, &state, now_ms))?;
    d.set_item("pending", crate::wallet::pending_total(&state))?;
    d.set_item("negative", state.neg)?;
    d.set_item("owed", state.owed)?;
    let lots: Vec<(String, i64, Option<i64>)> = state
        .lots
        .iter()
        .map(|l| (crate::wallet::month_label(l[0]), l[1], crate::wallet::expiry_ms(r, l[0])))
        .collect();
    d.set_item("next_expiry", lots.first().cloned())?;
    d.set_item("lots", lots)?;
    d.set_item(
        "pending_releases",
        state.pending.iter().map(|p| (p.points, p.release_at_ms)).collect::<Vec<_>>(),
    )?;
    Ok(d)
}

type RedeemAnswer = (&'static str, Option<String>, Option<String>, String);

/// Redeems points from a stored state; see `core_ext/_core.pyi`.
#[pyfunction]
pub fn redeem(
    py: Python<'_>,
    rules: &PyRuleSet,
    state_json: Option<&str>,
    redemption_id: &str,
    body: &[u8],
    now_ms: i64,
) -> PyResult<RedeemAnswer> {
    use crate::redemption::{self, RedeemError};
    let req = redemption::parse_request(body).map_err(|e| core_error_to_py(py, e))?;
    let mut state = stored_state(state_json)?;
    match redemption::redeem(&rules.inner, &mut state, redemption_id, &req, now_ms) {
        Ok(r) => Ok(("redeemed", Some(state.to_json()), Some(r.rows_json), r.result_json)),
        Err(RedeemError::Insufficient { available, needed }) => Ok((
            "insufficient",
            None,
            None,
            serde_json::json!({"error": "insufficient points", "available": available, "needed": needed})
                .to_string(),
        )),
        Err(RedeemError::Invalid(e)) => Err(core_error_to_py(py, e)),
    }
}

/// Reverses a stored redemption: `(state_json, rows_json, result_json)`.
#[pyfunction]
pub fn reverse_redemption(
    py: Python<'_>,
    rules: &PyRuleSet,
    state_json: Option<&str>,
    stored_rows_json: &str,
    now_ms: i64,
) -> PyResult<(String, String, String)> {
    let mut state = stored_state(state_json)?;
    let r = crate::redemption::reverse(&rules.inner, &mut state, stored_rows_json, now_ms)
        .map_err(|e| core_error_to_py(py, e))?;
    Ok((state.to_json(), r.rows_json, r.result_json))
}

/// Replays raw payment bodies (oldest first) through `rules` from empty states.
#[pyfunction]
pub fn simulate<'py>(
    py: Python<'py>,
    rules: &PyRuleSet,
    bodies: Vec<Bound<'py, PyBytes>>,
) -> PyResult<Bound<'py, PyDict>> {
    let refs: Vec<&[u8]> = bodies.iter().map(|b| b.as_bytes()).collect();
    let rules_inner = Arc::clone(&rules.inner);
    let r = py.detach(|| {
        let events: Vec<_> = refs.iter().map(|b| events::parse_event(b)).collect();
        crate::simulate::simulate(&rules_inner, &events)
    });
    let d = PyDict::new(py);
    d.set_item("events", r.events)?;
    d.set_item("refused", r.refused)?;
    d.set_item("points_issued", r.points_issued)?;
    d.set_item("points_clawed_back", r.points_clawed_back)?;
    d.set_item("points_by_bu", r.points_by_bu)?;
    d.set_item("points_by_format", r.points_by_format)?;
    d.set_item(
        "campaigns",
        rules
            .inner
            .campaigns
            .iter()
            .map(|c| (c.id.clone(), r.campaign_points.get(&c.id).copied().unwrap_or(0), c.budget_points))
            .collect::<Vec<_>>(),
    )?;
    d.set_item("upgrades", r.upgrades)?;
    d.set_item("final_tiers", r.final_tiers)?;
    d.set_item("cost_fen_by_bu", r.cost_fen_by_bu)?;
    d.set_item("points_by_member", r.points_by_member)?;
    Ok(d)
}

type RebuiltRecord = (String, String, i64, i64, Option<String>);
type RebuiltMember = (String, i64, Vec<RebuiltRecord>, Option<i64>, Option<i64>);

/// Rebuilds a member's state from their ledger rows (a JSON array, oldest first):
/// `(state_json, balance, records, review_at_ms, next_check_ms)`, each record being
/// `(event_id, kind, amount_fen, points, record)`, `record` the string Redis keeps for a
/// payment or refund (None for the other kinds, whose record the caller writes).
/// `snapshot`: the member's state as its last write left it (the `member_states` table);
/// when given, it is the state restored (coupons, profile, engagement... that no ledger
/// row carries), the ledger still giving the balance and the records.
#[pyfunction]
#[pyo3(signature = (rules, rows_json, now_ms, snapshot=None))]
pub fn rebuild_member(
    py: Python<'_>,
    rules: &PyRuleSet,
    rows_json: &str,
    now_ms: i64,
    snapshot: Option<&str>,
) -> PyResult<RebuiltMember> {
    let rows: Vec<crate::rebuild::StoredRow> = serde_json::from_str(rows_json)
        .map_err(|e| core_error_to_py(py, CoreError::invalid_event("rows", format!("unreadable ledger rows: {e}"))))?;
    let mut r = crate::rebuild::rebuild_member(&rules.inner, &rows, now_ms);
    if let Some(text) = snapshot {
        r.state = MemberState::from_json(Some(text))
            .map_err(|e| core_error_to_py(py, CoreError::invalid_event("snapshot", e)))?;
    }
    let records = r
        .records
        .into_iter()
        .map(|e| {
            let rec = e.encode(&rules.inner);
            (e.event_id, e.kind, e.payment.amount_fen, e.payment.points, rec)
        })
        .collect();
    let next = crate::wallet::next_check_ms(&rules.inner, &r.state);
    Ok((r.state.to_json(), r.balance, records, r.state.review_at_ms, next))
}

/// Locks points for a checkout: `(status, state_json, answer_json)`; status "held" or
/// "insufficient" (state None).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn hold_points(
    py: Python<'_>,
    rules: &PyRuleSet,
    state_json: Option<&str>,
    hold_id: &str,
    points: i64,
    ttl_ms: i64,
    now_ms: i64,
) -> PyResult<(&'static str, Option<String>, String)> {
    crate::events::check_id("hold_id", hold_id).map_err(|e| core_error_to_py(py, e))?;
    if !(1..=1_000_000_000).contains(&points) {
        return Err(core_error_to_py(py, CoreError::invalid_event("points", "must be an integer from 1 to 1000000000")));
    }
    if !(1_000..=86_400_000).contains(&ttl_ms) {
        return Err(core_error_to_py(py, CoreError::invalid_event("ttl_seconds", "must be from 1 to 86400")));
    }
    let mut state = stored_state(state_json)?;
    crate::wallet::release_due(&mut state, now_ms);
    let available = crate::wallet::available(&rules.inner, &state, now_ms);
    match crate::wallet::hold(&rules.inner, &mut state, hold_id, points, now_ms + ttl_ms, now_ms) {
        Some(lots) => Ok((
            "held",
            Some(state.to_json()),
            serde_json::json!({"hold_id": hold_id, "status": "held", "points": points,
                               "expires_at_ms": now_ms + ttl_ms,
                               "lots": lots.iter().map(|l| serde_json::json!({"month": crate::wallet::month_label(l[0]), "points": l[1]})).collect::<Vec<_>>(),
                               "available_after": crate::wallet::available(&rules.inner, &state, now_ms)})
            .to_string(),
        )),
        None => Ok((
            "insufficient",
            None,
            serde_json::json!({"error": "insufficient points", "available": available, "needed": points}).to_string(),
        )),
    }
}

/// Releases a hold: `(state_json or None if there is no such hold, points)`.
#[pyfunction]
pub fn release_hold(state_json: Option<&str>, hold_id: &str) -> PyResult<(Option<String>, i64)> {
    let mut state = stored_state(state_json)?;
    Ok(match crate::wallet::release_hold(&mut state, hold_id) {
        Some(h) => (Some(state.to_json()), h.points),
        None => (None, 0),
    })
}

/// Prices an exit and, when points pay, spends them: `(fee_json, state_json, rows_json)`,
/// state and rows None when no points were used. Raises for an unknown car park.
#[pyfunction]
#[pyo3(signature = (rules, car_park, exit_event_id, member_id, state_json, entry_ms, exit_ms, coupon_minutes, auto_pay))]
#[allow(clippy::too_many_arguments)]
pub fn parking_exit(
    py: Python<'_>,
    rules: &PyRuleSet,
    car_park: &str,
    exit_event_id: &str,
    member_id: Option<&str>,
    state_json: Option<&str>,
    entry_ms: i64,
    exit_ms: i64,
    coupon_minutes: i64,
    auto_pay: bool,
) -> PyResult<(String, Option<String>, Option<String>)> {
    let park = rules.inner.car_parks.get(car_park).ok_or_else(|| {
        core_error_to_py(py, CoreError::invalid_event("car_park", format!("unknown car park {car_park:?}")))
    })?;
    let mut state = match member_id {
        Some(_) => Some(stored_state(state_json)?),
        None => None,
    };
    let (fee, rows) = crate::parking::settle_exit(
        &rules.inner,
        park,
        exit_event_id,
        member_id,
        state.as_mut(),
        entry_ms,
        exit_ms,
        coupon_minutes,
        auto_pay,
    );
    let fee_json = serde_json::to_string(&fee).expect("a fee always serialises");
    let new_state = rows.as_ref().and(state.as_ref()).map(|s| s.to_json());
    Ok((fee_json, new_state, rows))
}

/// What a stored state's lots, pending and held points less the negative balance add
/// up to: the balance must equal it (`MemberState::wallet_total`).
#[pyfunction]
pub fn wallet_total(state_json: Option<&str>) -> PyResult<i64> {
    Ok(stored_state(state_json)?.wallet_total())
}

/// When a stored state next needs the scheduled wallet check (a release, an expiry, a
/// reminder, a hold's or coupon's end, a partner's answer overdue); None: never.
#[pyfunction]
pub fn next_wallet_check_ms(rules: &PyRuleSet, state_json: Option<&str>) -> PyResult<Option<i64>> {
    let state = stored_state(state_json)?;
    Ok(crate::wallet::next_check_ms(&rules.inner, &state))
}

/// Redeems a coupon at the till from a stored state: `(changed, state_json, rows_json, result_json)`.
#[pyfunction]
pub fn redeem_coupon(
    py: Python<'_>,
    rules: &PyRuleSet,
    state_json: Option<&str>,
    body: &[u8],
    now_ms: i64,
) -> PyResult<(bool, String, String, String)> {
    let mut state = stored_state(state_json)?;
    let (changed, result, rows) = crate::coupons::redeem_at_till(&rules.inner, &mut state, body, now_ms)
        .map_err(|e| core_error_to_py(py, e))?;
    let rows_json = format!("[{}]", crate::coupons::rows_json(&rows).join(","));
    Ok((changed, state.to_json(), rows_json, result))
}

/// The member's coupon wallet as JSON (newest first).
#[pyfunction]
pub fn coupon_wallet(rules: &PyRuleSet, state_json: Option<&str>, now_ms: i64) -> PyResult<String> {
    let state = stored_state(state_json)?;
    Ok(crate::coupons::wallet_json(&rules.inner, &state, now_ms))
}

/// The live points liability by expiry month over stored member states: [(month, points)].
#[pyfunction]
pub fn liability_by_expiry(rules: &PyRuleSet, states_json: Vec<Option<String>>) -> PyResult<Vec<(String, i64)>> {
    let states = states_json
        .iter()
        .map(|s| stored_state(s.as_deref()))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(crate::wallet::liability_by_expiry(&rules.inner, &states))
}

type EngageAnswer = (String, String, String, i64, i64, i64, Option<String>, Vec<(String, i64)>, Option<String>);

/// An engagement operation (game play, sign-in plan, partner exchange, stored value)
/// on a stored state; see `core_ext/_core.pyi`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn engage(
    py: Python<'_>,
    rules: &PyRuleSet,
    op: &str,
    state_json: Option<&str>,
    op_id: &str,
    body: &[u8],
    context_json: &str,
    now_ms: i64,
) -> PyResult<EngageAnswer> {
    let ctx: crate::engage::Context = serde_json::from_str(context_json)
        .map_err(|e| InvalidArgumentError::new_err(format!("engage: context is not valid: {e}")))?;
    let mut state = stored_state(state_json)?;
    let d = match op {
        "mall_exchange" => crate::mall::exchange(&rules.inner, &mut state, op_id, body, &ctx, now_ms),
        "mall_order" => crate::mall::order(&rules.inner, &mut state, op_id, body, now_ms),
        "receipt_submit" => crate::receipts::submit(&rules.inner, &mut state, op_id, body, &ctx, now_ms),
        "receipt_review" => crate::receipts::review(&rules.inner, &mut state, op_id, body, &ctx, now_ms),
        op if crate::signups::OPS.contains(&op) => crate::signups::apply(&rules.inner, op, &mut state, op_id, body, &ctx, now_ms),
        _ => crate::engage::apply(&rules.inner, op, &mut state, op_id, body, &ctx, now_ms),
    }
        .map_err(|e| core_error_to_py(py, e))?;
    Ok((state.to_json(), d.rows_json, d.result_json, d.points, d.sv_fen, d.amount_fen, d.refund_of, d.consumed, d.publish))
}

/// The members' events as a member sees them (None: as anyone): seats left, window, and
/// `can_sign_up` (else `why_not` and its `field`), sorted by start.
#[pyfunction]
pub fn events_catalogue<'py>(
    py: Python<'py>,
    rules: &PyRuleSet,
    state_json: Option<&str>,
    spent: std::collections::HashMap<String, i64>,
    now_ms: i64,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let state = stored_state(state_json)?;
    let r = &rules.inner;
    let mut all: Vec<&crate::engage_rules::Gathering> = r.engagement.gatherings.values().collect();
    all.sort_by(|a, b| (a.starts_ms, &a.id).cmp(&(b.starts_ms, &b.id)));
    let mut out = Vec::with_capacity(all.len());
    for g in all {
        let d = PyDict::new(py);
        let taken = spent.get(&crate::engage_rules::seats_budget_id(&g.id)).copied().unwrap_or(0);
        let why = state_json.map(|_| crate::signups::refusal(r, &state, g, now_ms)).unwrap_or(None);
        let sorted = |s: &Option<rustc_hash::FxHashSet<String>>| -> Option<Vec<String>> {
            s.as_ref().map(|t| {
                let mut v: Vec<String> = t.iter().cloned().collect();
                v.sort();
                v
            })
        };
        d.set_item("event", &g.id)?;
        d.set_item("name", &g.name)?;
        d.set_item("capacity", g.capacity)?;
        d.set_item("seats_left", (g.capacity - taken).max(0))?;
        d.set_item("points", g.points)?;
        d.set_item("tiers", sorted(&g.tiers))?;
        d.set_item("tags", sorted(&g.tags))?;
        d.set_item("signup_from_ms", g.signup_from_ms)?;
        d.set_item("signup_to_ms", g.signup_to_ms)?;
        d.set_item("starts_at_ms", g.starts_ms)?;
        d.set_item("ends_at_ms", g.ends_ms)?;
        d.set_item("no_show_ban_days", g.no_show_ban_days)?;
        d.set_item("can_sign_up", state_json.is_some() && why.is_none())?;
        d.set_item("why_not", why.as_ref().map(|w| w.1.clone()))?;
        d.set_item("field", why.as_ref().map(|w| w.0))?;
        out.push(d);
    }
    Ok(out)
}

/// Refuses (InvalidEventError, field "image") a name that is not an uploaded image's.
#[pyfunction]
pub fn check_image_name(py: Python<'_>, name: &str) -> PyResult<()> {
    crate::receipts::check_image("image", name).map_err(|e| core_error_to_py(py, e))
}

/// A receipt's id from its merchant and receipt number (`receipts.rs`): the same for every
/// member, so the receipt's operation and its payment are named by it.
#[pyfunction]
pub fn receipt_id(merchant_id: &str, receipt_no: &str) -> String {
    crate::receipts::receipt_id(merchant_id, receipt_no)
}

/// What a stored state holds of engagement: games played today, cards, sign-in plans,
/// pending exchanges, stored value; JSON.
#[pyfunction]
pub fn engagement_view(rules: &PyRuleSet, state_json: Option<&str>, now_ms: i64) -> PyResult<String> {
    let state = stored_state(state_json)?;
    let day = Local::of(now_ms, rules.inner.utc_offset_minutes).day;
    let games: serde_json::Map<String, serde_json::Value> = state
        .game_plays
        .iter()
        .map(|(g, p)| (g.clone(), serde_json::json!(if p[0] == day { p[1] } else { 0 })))
        .collect();
    Ok(serde_json::json!({
        "plays_today": games, "cards": state.cards, "plans": state.plans,
        "pending_exchanges": state.exchanges, "stored_value_fen": state.sv_fen,
        "profile_fields": state.profile_fields, "profile_rewards": state.profile_rewarded,
        "referrals_total": state.referrals_total,
    })
    .to_string())
}

/// A stored event record's fields by name (the layout is spelled in record.rs only); {}
/// for none; an operation's JSON record gives kind "json" and its text under "json".
#[pyfunction]
#[pyo3(signature = (value))]
pub fn record_fields(value: Option<&str>) -> PyResult<std::collections::HashMap<&'static str, String>> {
    match value {
        None | Some("") => Ok(std::collections::HashMap::new()),
        Some(v) => {
            let record = crate::record::Record::decode(v).map_err(CorruptStateError::new_err)?;
            Ok(record.fields().into_iter().collect())
        }
    }
}
