//! The engagement sections of the rules file as written (games, sign-in plans, burn-side
//! promotions, partners, stored value, channels, profile rewards, leaderboards) and their
//! loader into `crate::engage_rules`.

use super::Source;
use crate::coupon_rules::CouponTemplate;
use crate::engage_rules::*;
use crate::errors::CoreResult;
use crate::rules::{BusinessUnit, Rate};
use crate::time::parse_instant_ms;
use rustc_hash::FxHashMap as HashMap;
use serde::Deserialize;
use toml::Spanned;

type S<T> = Spanned<T>;

// ---- as written ------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrize {
    id: S<String>,
    odds_ppm: S<i64>,
    stock: Option<S<i64>>,
    points: Option<S<i64>>,
    coupon: Option<S<String>>,
    card: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGame {
    id: S<String>,
    kind: S<String>,
    cost_points: S<i64>,
    daily_limit: Option<S<i64>>,
    valid_from: Option<S<String>>,
    valid_to: Option<S<String>>,
    #[serde(default)]
    prizes: Vec<RawPrize>,
    set_reward_points: Option<S<i64>>,
    set_reward_coupon: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignInPlan {
    id: S<String>,
    cycle_days: S<i64>,
    rewards: S<Vec<i64>>,
    makeup_cost_points: Option<S<i64>>,
    makeup_max_per_cycle: Option<S<i64>>,
    contract_min_stake: Option<S<i64>>,
    contract_max_stake: Option<S<i64>>,
    contract_bonus_pct: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBurnPromotion {
    id: S<String>,
    kinds: Option<S<Vec<String>>>,
    bus: Option<S<Vec<String>>>,
    formats: Option<S<Vec<String>>>,
    categories: Option<S<Vec<String>>>,
    starts_at: Option<S<String>>,
    ends_at: Option<S<String>>,
    value_pct: Option<S<i64>>,
    price_pct: Option<S<i64>>,
    earned_bus: Option<S<Vec<String>>>,
    earned_formats: Option<S<Vec<String>>>,
    earned_within_days: Option<S<i64>>,
    funded_by: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPartner {
    id: S<String>,
    kind: S<String>,
    points_per_unit_out: Option<S<i64>>,
    points_per_unit_in: Option<S<i64>>,
    unit_value_fen: S<i64>,
    daily_limit_points: S<i64>,
    answer_wait_s: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStoredValue {
    max_balance_fen: S<i64>,
    max_topup_fen: S<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGathering {
    id: S<String>,
    name: Option<S<String>>,
    capacity: S<i64>,
    points: Option<S<i64>>,
    tiers: Option<S<Vec<String>>>,
    tags: Option<S<Vec<String>>>,
    signup_from: Option<S<String>>,
    signup_to: Option<S<String>>,
    starts_at: S<String>,
    ends_at: S<String>,
    no_show_ban_days: Option<S<i64>>,
}

/// `[[member_events]]`: members' events with sign-up.
pub(crate) fn gatherings(src: &Source, raw: &[RawGathering], tier_ids: &[String]) -> CoreResult<HashMap<String, Gathering>> {
    let mut out = HashMap::default();
    for (i, g) in raw.iter().enumerate() {
        let f = |n: &str| format!("member_events[{i}].{n}");
        let id = src.id(&g.id, &f("id"))?;
        if out.contains_key(&id) {
            return src.err(g.id.span(), &f("id"), "is a duplicate");
        }
        let at = |v: &S<String>, field: &str| -> CoreResult<i64> {
            parse_instant_ms(v.get_ref()).or_else(|e| src.err(v.span(), field, e.reason().to_string()))
        };
        let starts_ms = at(&g.starts_at, &f("starts_at"))?;
        let ends_ms = at(&g.ends_at, &f("ends_at"))?;
        if ends_ms <= starts_ms {
            return src.err(g.ends_at.span(), &f("ends_at"), "must be after starts_at");
        }
        let signup_from_ms = instant(src, &g.signup_from, &f("signup_from"))?;
        let signup_to_ms = instant(src, &g.signup_to, &f("signup_to"))?.unwrap_or(starts_ms);
        if signup_to_ms > starts_ms {
            let span = g.signup_to.as_ref().map_or(g.starts_at.span(), |x| x.span());
            return src.err(span, &f("signup_to"), "sign-up closes at the latest when the event starts");
        }
        if signup_from_ms.is_some_and(|a| a >= signup_to_ms) {
            let span = g.signup_from.as_ref().map_or(g.starts_at.span(), |x| x.span());
            return src.err(span, &f("signup_from"), "must be before signup_to");
        }
        let is_tier = |t: &str| tier_ids.iter().any(|x| x == t);
        out.insert(id.clone(), Gathering {
            name: g.name.as_ref().map_or_else(|| id.clone(), |n| n.get_ref().clone()),
            id,
            capacity: src.int(&g.capacity, &f("capacity"), 1..=100_000)?,
            points: src.opt_int(&g.points, &f("points"), 0..=100_000_000)?.unwrap_or(0),
            tiers: src.id_set(&g.tiers, &f("tiers"), Some(&is_tier), "tier")?,
            tags: src.id_set(&g.tags, &f("tags"), None, "tag")?,
            signup_from_ms,
            signup_to_ms,
            starts_ms,
            ends_ms,
            no_show_ban_days: src.opt_int(&g.no_show_ban_days, &f("no_show_ban_days"), 0..=365)?.unwrap_or(0),
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReceipts {
    max_age_days: Option<S<i64>>,
    auto_merchants: Option<S<Vec<String>>>,
    auto_max_fen: Option<S<i64>>,
    auto_within_days: Option<S<i64>>,
    auto_daily_cap: Option<S<i64>>,
}

/// `[receipts]`: receipt points offered; `merchant` tells a known merchant id.
pub(crate) fn receipts(src: &Source, r: &RawReceipts, merchant: &dyn Fn(&str) -> bool) -> CoreResult<ReceiptRules> {
    let max_age_days = src.opt_int(&r.max_age_days, "receipts.max_age_days", 1..=365)?.unwrap_or(30);
    let auto_within_days = src.opt_int(&r.auto_within_days, "receipts.auto_within_days", 0..=365)?.unwrap_or(3);
    if auto_within_days > max_age_days {
        let span = r.auto_within_days.as_ref().map_or(0..0, |x| x.span());
        return src.err(span, "receipts.auto_within_days", format!("must not exceed max_age_days ({max_age_days})"));
    }
    Ok(ReceiptRules {
        max_age_days,
        auto_merchants: src.id_set(&r.auto_merchants, "receipts.auto_merchants", Some(merchant), "merchant")?.unwrap_or_default(),
        auto_max_fen: src.opt_int(&r.auto_max_fen, "receipts.auto_max_fen", 0..=100_000_000)?.unwrap_or(0),
        auto_within_days,
        auto_daily_cap: src.opt_int(&r.auto_daily_cap, "receipts.auto_daily_cap", 0..=1_000)?.unwrap_or(0),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    id: S<String>,
    multiplier_pct: S<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfileReward {
    id: S<String>,
    fields: S<Vec<String>>,
    points: S<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLeaderboard {
    period: S<String>,
    scope: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMallItem {
    id: S<String>,
    name: Option<S<String>>,
    kind: S<String>,
    points: S<i64>,
    stock: Option<S<i64>>,
    per_member_limit: Option<S<i64>>,
    per_day_limit: Option<S<i64>>,
    tiers: Option<S<Vec<String>>>,
    bu: S<String>,
    value_fen: Option<S<i64>>,
    valid_from: Option<S<String>>,
    valid_to: Option<S<String>>,
    flash: Option<S<bool>>,
    coupon: Option<S<String>>,
    collect_days: Option<S<i64>>,
    cash_fen: Option<S<i64>>,
    pay_minutes: Option<S<i64>>,
}

pub struct RawEngagement<'a> {
    pub games: &'a [RawGame],
    pub sign_in_plans: &'a [RawSignInPlan],
    pub burn_promotions: &'a [RawBurnPromotion],
    pub partners: &'a [RawPartner],
    pub stored_value: Option<&'a RawStoredValue>,
    pub channels: &'a [RawChannel],
    pub profile_rewards: &'a [RawProfileReward],
    pub leaderboards: &'a [RawLeaderboard],
    pub mall_items: &'a [RawMallItem],
}

const POINTS: std::ops::RangeInclusive<i64> = 0..=100_000_000;

fn instant(src: &Source, v: &Option<S<String>>, field: &str) -> CoreResult<Option<i64>> {
    match v {
        None => Ok(None),
        Some(v) => parse_instant_ms(v.get_ref())
            .map(Some)
            .or_else(|e| src.err(v.span(), field, e.reason().to_string())),
    }
}

pub(crate) fn load(
    src: &Source,
    raw: RawEngagement,
    bus: &HashMap<String, BusinessUnit>,
    formats: &HashMap<String, Rate>,
    templates: &HashMap<String, CouponTemplate>,
    tier_ids: &[String],
) -> CoreResult<Engagement> {
    let mut out = Engagement::default();
    let known_template = |v: &S<String>, field: &str| -> CoreResult<String> {
        let id = src.id(v, field)?;
        if !templates.contains_key(&id) {
            return src.err(v.span(), field, format!("unknown coupon template {id:?}"));
        }
        Ok(id)
    };
    for (i, g) in raw.games.iter().enumerate() {
        let f = |n: &str| format!("games[{i}].{n}");
        let id = src.id(&g.id, &f("id"))?;
        if out.games.contains_key(&id) {
            return src.err(g.id.span(), &f("id"), "is a duplicate");
        }
        let kind = g.kind.get_ref().clone();
        if !GAME_KINDS.contains(&kind.as_str()) {
            return src.err(g.kind.span(), &f("kind"), format!("{kind:?} is not one of {}", GAME_KINDS.join(", ")));
        }
        let (from_ms, to_ms) = (instant(src, &g.valid_from, &f("valid_from"))?, instant(src, &g.valid_to, &f("valid_to"))?);
        if let (Some(a), Some(b), Some(raw_to)) = (from_ms, to_ms, &g.valid_to) {
            if b <= a {
                return src.err(raw_to.span(), &f("valid_to"), "must be after valid_from");
            }
        }
        if g.prizes.is_empty() {
            return src.err(g.id.span(), &f("prizes"), "a game needs at least one prize");
        }
        let mut prizes: Vec<Prize> = Vec::new();
        let mut total = 0;
        for (k, p) in g.prizes.iter().enumerate() {
            let pf = |n: &str| format!("games[{i}].prizes[{k}].{n}");
            let pid = src.id(&p.id, &pf("id"))?;
            if prizes.iter().any(|x| x.id == pid) {
                return src.err(p.id.span(), &pf("id"), "is a duplicate");
            }
            let odds_ppm = src.int(&p.odds_ppm, &pf("odds_ppm"), 1..=ODDS_TOTAL)?;
            total += odds_ppm;
            if total > ODDS_TOTAL {
                return src.err(p.odds_ppm.span(), &pf("odds_ppm"), "the prizes' odds add up to more than 1000000 ppm");
            }
            let reward = match (&p.points, &p.coupon, &p.card) {
                (Some(n), None, None) => Reward::Points(src.int(n, &pf("points"), 1..=100_000_000)?),
                (None, Some(c), None) => Reward::Coupon(known_template(c, &pf("coupon"))?),
                (None, None, Some(c)) => Reward::Card(src.id(c, &pf("card"))?),
                _ => return src.err(p.id.span(), &pf("points"), "set exactly one of points, coupon, card"),
            };
            if matches!(reward, Reward::Card(_)) != (kind == "cards") {
                return src.err(p.id.span(), &pf("card"), "cards are the prizes of (and only of) kind \"cards\"");
            }
            prizes.push(Prize { id: pid, odds_ppm, stock: src.opt_int(&p.stock, &pf("stock"), 0..=1_000_000_000)?, reward });
        }
        let game = Game {
            id: id.clone(),
            kind: kind.clone(),
            cost_points: src.int(&g.cost_points, &f("cost_points"), POINTS)?,
            daily_limit: src.opt_int(&g.daily_limit, &f("daily_limit"), 1..=1_000)?,
            from_ms,
            to_ms,
            prizes,
            set_reward_points: src.opt_int(&g.set_reward_points, &f("set_reward_points"), POINTS)?.unwrap_or(0),
            set_reward_coupon: g.set_reward_coupon.as_ref().map(|c| known_template(c, &f("set_reward_coupon"))).transpose()?,
        };
        if kind == "cards" && game.set_reward_points == 0 && game.set_reward_coupon.is_none() {
            return src.err(g.kind.span(), &f("set_reward_points"), "a card game needs set_reward_points or set_reward_coupon");
        }
        out.games.insert(id, game);
    }
    for (i, p) in raw.sign_in_plans.iter().enumerate() {
        let f = |n: &str| format!("sign_in_plans[{i}].{n}");
        let id = src.id(&p.id, &f("id"))?;
        if out.sign_in_plans.contains_key(&id) {
            return src.err(p.id.span(), &f("id"), "is a duplicate");
        }
        let cycle_days = src.int(&p.cycle_days, &f("cycle_days"), 2..=31)?;
        let rewards = p.rewards.get_ref().clone();
        if rewards.len() as i64 != cycle_days || rewards.iter().any(|r| !POINTS.contains(r)) {
            return src.err(p.rewards.span(), &f("rewards"), format!("list {cycle_days} rewards (points per consecutive day, 0-100000000)"));
        }
        let contract = match (&p.contract_min_stake, &p.contract_max_stake, &p.contract_bonus_pct) {
            (None, None, None) => None,
            (Some(a), Some(b), Some(c)) => {
                let c = Contract {
                    min_stake: src.int(a, &f("contract_min_stake"), 1..=100_000_000)?,
                    max_stake: src.int(b, &f("contract_max_stake"), 1..=100_000_000)?,
                    bonus_pct: src.int(c, &f("contract_bonus_pct"), 0..=1_000)?,
                };
                if c.max_stake < c.min_stake {
                    return src.err(b.span(), &f("contract_max_stake"), "must be at least contract_min_stake");
                }
                Some(c)
            }
            _ => return src.err(p.id.span(), &f("contract_min_stake"), "set contract_min_stake, contract_max_stake and contract_bonus_pct together"),
        };
        out.sign_in_plans.insert(id.clone(), SignInPlan {
            id,
            cycle_days,
            rewards,
            makeup_cost_points: src.opt_int(&p.makeup_cost_points, &f("makeup_cost_points"), 1..=100_000_000)?,
            makeup_max_per_cycle: src.opt_int(&p.makeup_max_per_cycle, &f("makeup_max_per_cycle"), 0..=31)?.unwrap_or(1),
            contract,
        });
    }
    let is_bu = |x: &str| bus.contains_key(x);
    let is_format = |x: &str| formats.contains_key(x);
    let is_kind = |x: &str| REDEMPTION_KINDS.contains(&x);
    for (i, p) in raw.burn_promotions.iter().enumerate() {
        let f = |n: &str| format!("burn_promotions[{i}].{n}");
        let id = src.id(&p.id, &f("id"))?;
        if out.burn_promotions.iter().any(|x| x.id == id) {
            return src.err(p.id.span(), &f("id"), "is a duplicate");
        }
        let funded_by = match &p.funded_by {
            None => "pool".to_string(),
            Some(v) => {
                let b = src.id(v, &f("funded_by"))?;
                if b != "pool" && !bus.contains_key(&b) {
                    return src.err(v.span(), &f("funded_by"), format!("unknown business unit {b:?} (or \"pool\")"));
                }
                b
            }
        };
        let promo = BurnPromotion {
            kinds: src.id_set(&p.kinds, &f("kinds"), Some(&is_kind), "redemption kind")?,
            bus: src.id_set(&p.bus, &f("bus"), Some(&is_bu), "business unit")?,
            formats: src.id_set(&p.formats, &f("formats"), Some(&is_format), "format")?,
            categories: src.id_set(&p.categories, &f("categories"), None, "category")?,
            from_ms: instant(src, &p.starts_at, &f("starts_at"))?,
            to_ms: instant(src, &p.ends_at, &f("ends_at"))?,
            value_pct: src.opt_int(&p.value_pct, &f("value_pct"), 1..=1_000)?.unwrap_or(100),
            price_pct: src.opt_int(&p.price_pct, &f("price_pct"), 1..=100)?.unwrap_or(100),
            earned_bus: src.id_set(&p.earned_bus, &f("earned_bus"), Some(&is_bu), "business unit")?,
            earned_formats: src.id_set(&p.earned_formats, &f("earned_formats"), Some(&is_format), "format")?,
            earned_within_days: src.opt_int(&p.earned_within_days, &f("earned_within_days"), 1..=366)?.unwrap_or(0),
            funded_by,
            id,
        };
        if promo.value_pct == 100 && promo.price_pct == 100 {
            return src.err(p.id.span(), &f("value_pct"), "set value_pct or price_pct (100 changes nothing)");
        }
        if promo.needs_origin() != (promo.earned_within_days > 0) {
            return src.err(p.id.span(), &f("earned_within_days"), "set earned_within_days with earned_bus or earned_formats");
        }
        if promo.needs_origin() && promo.value_pct == 100 {
            return src.err(p.id.span(), &f("value_pct"), "a promotion on where points were earned sets value_pct");
        }
        out.origin_window_days = out.origin_window_days.max(promo.earned_within_days);
        out.burn_promotions.push(promo);
    }
    for (i, p) in raw.partners.iter().enumerate() {
        let f = |n: &str| format!("partners[{i}].{n}");
        let id = src.id(&p.id, &f("id"))?;
        if out.partners.contains_key(&id) {
            return src.err(p.id.span(), &f("id"), "is a duplicate");
        }
        if !["bank", "airline", "other"].contains(&p.kind.get_ref().as_str()) {
            return src.err(p.kind.span(), &f("kind"), "must be one of bank, airline, other");
        }
        let partner = Partner {
            id: id.clone(),
            kind: p.kind.get_ref().clone(),
            points_per_unit_out: src.opt_int(&p.points_per_unit_out, &f("points_per_unit_out"), 1..=1_000_000)?,
            points_per_unit_in: src.opt_int(&p.points_per_unit_in, &f("points_per_unit_in"), 1..=1_000_000)?,
            unit_value_fen: src.int(&p.unit_value_fen, &f("unit_value_fen"), 0..=1_000_000)?,
            daily_limit_points: src.int(&p.daily_limit_points, &f("daily_limit_points"), 1..=100_000_000)?,
            answer_wait_ms: src.opt_int(&p.answer_wait_s, &f("answer_wait_s"), 1..=30 * 86_400)?.unwrap_or(48 * 3600)
                * 1000,
        };
        if partner.points_per_unit_out.is_none() && partner.points_per_unit_in.is_none() {
            return src.err(p.id.span(), &f("points_per_unit_out"), "set points_per_unit_out, points_per_unit_in or both");
        }
        out.partners.insert(id, partner);
    }
    if let Some(sv) = raw.stored_value {
        out.stored_value = Some(StoredValue {
            max_balance_fen: src.int(&sv.max_balance_fen, "stored_value.max_balance_fen", 1..=100_000_000_000)?,
            max_topup_fen: src.int(&sv.max_topup_fen, "stored_value.max_topup_fen", 1..=100_000_000_000)?,
        });
    }
    for (i, c) in raw.channels.iter().enumerate() {
        let f = |n: &str| format!("channels[{i}].{n}");
        let id = src.id(&c.id, &f("id"))?;
        let pct = src.int(&c.multiplier_pct, &f("multiplier_pct"), 0..=1_000)?;
        if out.channel_multiplier_pct.insert(id, pct).is_some() {
            return src.err(c.id.span(), &f("id"), "is a duplicate");
        }
    }
    for (i, r) in raw.profile_rewards.iter().enumerate() {
        let f = |n: &str| format!("profile_rewards[{i}].{n}");
        let id = src.id(&r.id, &f("id"))?;
        if out.profile_rewards.iter().any(|x| x.id == id) {
            return src.err(r.id.span(), &f("id"), "is a duplicate");
        }
        let fields = r.fields.get_ref().clone();
        if fields.is_empty() {
            return src.err(r.fields.span(), &f("fields"), "must not be empty");
        }
        if let Some(bad) = fields.iter().find(|x| !PROFILE_FIELDS.contains(&x.as_str())) {
            return src.err(r.fields.span(), &f("fields"), format!("{bad:?} is not one of {}", PROFILE_FIELDS.join(", ")));
        }
        out.profile_rewards.push(ProfileReward { id, fields, points: src.int(&r.points, &f("points"), 1..=100_000_000)? });
    }
    for (i, b) in raw.leaderboards.iter().enumerate() {
        let f = |n: &str| format!("leaderboards[{i}].{n}");
        let monthly = match b.period.get_ref().as_str() {
            "week" => false,
            "month" => true,
            other => return src.err(b.period.span(), &f("period"), format!("{other:?} is not week or month")),
        };
        let per_bu = match b.scope.get_ref().as_str() {
            "group" => false,
            "bu" => true,
            other => return src.err(b.scope.span(), &f("scope"), format!("{other:?} is not group or bu")),
        };
        let board = Leaderboard { monthly, per_bu };
        if out.leaderboards.contains(&board) {
            return src.err(b.period.span(), &f("period"), "this period and scope are defined twice");
        }
        out.leaderboards.push(board);
    }
    for (i, m) in raw.mall_items.iter().enumerate() {
        let f = |n: &str| format!("mall_items[{i}].{n}");
        let id = src.id(&m.id, &f("id"))?;
        if out.mall_items.contains_key(&id) {
            return src.err(m.id.span(), &f("id"), "is a duplicate");
        }
        let bu = src.id(&m.bu, &f("bu"))?;
        if !bus.contains_key(&bu) {
            return src.err(m.bu.span(), &f("bu"), format!("unknown business unit {bu:?}"));
        }
        let coupon = |want_parking: bool| -> CoreResult<String> {
            let Some(c) = &m.coupon else {
                return src.err(m.kind.span(), &f("coupon"), "this kind names the coupon template it issues");
            };
            let t = known_template(c, &f("coupon"))?;
            let parking = matches!(templates[&t].kind, crate::coupon_rules::CouponKind::Parking { .. });
            if parking != want_parking {
                return src.err(c.span(), &f("coupon"), if want_parking {
                    "a parking item issues a parking coupon template"
                } else {
                    "a parking coupon template is a parking item (kind = \"parking\")"
                });
            }
            Ok(t)
        };
        let kind = match m.kind.get_ref().as_str() {
            "goods" => MallKind::Goods,
            "benefit" => MallKind::Benefit,
            "coupon" => MallKind::Coupon(coupon(false)?),
            "parking" => MallKind::Parking(coupon(true)?),
            other => return src.err(m.kind.span(), &f("kind"), format!("{other:?} is not goods, benefit, coupon or parking")),
        };
        if matches!(kind, MallKind::Goods | MallKind::Benefit) {
            if let Some(c) = &m.coupon {
                return src.err(c.span(), &f("coupon"), "only coupon and parking items issue a coupon");
            }
        }
        let (from_ms, to_ms) = (instant(src, &m.valid_from, &f("valid_from"))?, instant(src, &m.valid_to, &f("valid_to"))?);
        if let (Some(a), Some(b), Some(raw_to)) = (from_ms, to_ms, &m.valid_to) {
            if b <= a {
                return src.err(raw_to.span(), &f("valid_to"), "must be after valid_from");
            }
        }
        let flash = m.flash.as_ref().is_some_and(|x| *x.get_ref());
        let stock = src.opt_int(&m.stock, &f("stock"), 0..=100_000_000)?;
        let mut per_member_limit = src.opt_int(&m.per_member_limit, &f("per_member_limit"), 1..=1_000_000)?;
        if flash {
            if stock.is_none() || from_ms.is_none() {
                return src.err(m.id.span(), &f("flash"), "a flash sale has a stock and a valid_from (its start)");
            }
            if per_member_limit.is_some_and(|l| l != 1) {
                let span = m.per_member_limit.as_ref().map_or(m.id.span(), |x| x.span());
                return src.err(span, &f("per_member_limit"), "a flash sale sells one per member");
            }
            per_member_limit = Some(1);
        }
        let cash_fen = src.opt_int(&m.cash_fen, &f("cash_fen"), 1..=100_000_000)?.unwrap_or(0);
        if let (Some(c), false) = (&m.cash_fen, matches!(kind, MallKind::Goods | MallKind::Benefit)) {
            return src.err(c.span(), &f("cash_fen"), "only goods and benefits take a cash part (points + cash)");
        }
        if let (Some(p), None) = (&m.pay_minutes, &m.cash_fen) {
            return src.err(p.span(), &f("pay_minutes"), "is the time to pay the cash part: set cash_fen too");
        }
        let is_tier = |t: &str| tier_ids.iter().any(|x| x == t);
        out.mall_items.insert(id.clone(), MallItem {
            name: m.name.as_ref().map_or_else(|| id.clone(), |n| n.get_ref().clone()),
            id,
            kind,
            points: src.int(&m.points, &f("points"), 1..=100_000_000)?,
            stock,
            per_member_limit,
            per_day_limit: src.opt_int(&m.per_day_limit, &f("per_day_limit"), 1..=1_000_000)?,
            tiers: src.id_set(&m.tiers, &f("tiers"), Some(&is_tier), "tier")?,
            bu,
            value_fen: src.opt_int(&m.value_fen, &f("value_fen"), 0..=100_000_000)?.unwrap_or(0),
            from_ms,
            to_ms,
            flash,
            collect_days: src.opt_int(&m.collect_days, &f("collect_days"), 1..=365)?.unwrap_or(30),
            cash_fen,
            pay_minutes: src.opt_int(&m.pay_minutes, &f("pay_minutes"), 1..=10_080)?.unwrap_or(30),
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFrequencyCap {
    pushes: S<i64>,
    days: Option<S<i64>>,
}

/// `[frequency_cap]`.
pub(crate) fn frequency_cap(src: &Source, r: &RawFrequencyCap) -> CoreResult<FrequencyCap> {
    Ok(FrequencyCap {
        pushes: src.int(&r.pushes, "frequency_cap.pushes", 1..=1_000)?,
        days: src.opt_int(&r.days, "frequency_cap.days", 1..=366)?.unwrap_or(7),
    })
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawCampaignAudience {
    tiers: Option<S<Vec<String>>>,
    tags: Option<S<Vec<String>>>,
    segments: Option<S<Vec<String>>>,
    bu: Option<S<String>>,
    formats: Option<S<Vec<String>>>,
    dormant_days: Option<S<i64>>,
    paid_within_days: Option<S<i64>>,
    birthday_month: Option<S<bool>>,
    points_expiring_within_days: Option<S<i64>>,
    min_points: Option<S<i64>>,
    registered_within_days: Option<S<i64>>,
    holds_coupon: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScheduled {
    id: S<String>,
    name: Option<S<String>>,
    every: S<String>,
    at: S<String>,
    weekday: Option<S<String>>,
    day: Option<S<i64>>,
    from: Option<S<String>>,
    to: Option<S<String>>,
    coupon: Option<S<String>>,
    notice: Option<S<String>>,
    capped: Option<S<bool>>,
    audience_id: Option<S<String>>,
    audience: Option<RawCampaignAudience>,
}

/// "HH:MM" as minutes after midnight.
fn minute_of_day(src: &Source, v: &S<String>, field: &str) -> CoreResult<i64> {
    let parsed = v.get_ref().split_once(':').and_then(|(h, m)| {
        let (h, m) = (h.parse::<i64>().ok()?, m.parse::<i64>().ok()?);
        ((0..24).contains(&h) && (0..60).contains(&m) && v.get_ref().len() == 5).then_some(h * 60 + m)
    });
    parsed.map_or_else(|| src.err(v.span(), field, "must be a local time \"HH:MM\""), Ok)
}

/// Names in a list, each one of `known` (empty when left out).
fn names(src: &Source, v: &Option<S<Vec<String>>>, field: &str, known: Option<&dyn Fn(&str) -> bool>, what: &str)
    -> CoreResult<Vec<String>> {
    let set = src.id_set(v, field, known, what)?;
    Ok(v.as_ref().filter(|_| set.is_some()).map(|l| l.get_ref().clone()).unwrap_or_default())
}

/// What each `[[scheduled_campaigns]]` may name.
pub(crate) struct ScheduledNames<'a> {
    pub tiers: &'a [String],
    pub bus: &'a HashMap<String, BusinessUnit>,
    pub formats: &'a dyn Fn(&str) -> bool,
    pub templates: &'a dyn Fn(&str) -> bool,
}

/// One audience's conditions (`[audiences.<id>]`, or a campaign's own `audience`), each
/// checked at its line and field (`at` names where it is).
fn audience_of(src: &Source, a: &RawCampaignAudience, at: &str, known: &ScheduledNames) -> CoreResult<CampaignAudience> {
    let g = |n: &str| format!("{at}.{n}");
    let is_tier = |t: &str| known.tiers.iter().any(|x| x == t);
    let bu = match &a.bu {
        None => String::new(),
        Some(b) if known.bus.contains_key(b.get_ref()) => b.get_ref().clone(),
        Some(b) => return src.err(b.span(), &g("bu"), format!("unknown business unit {:?}", b.get_ref())),
    };
    let holds_coupon = match &a.holds_coupon {
        None => String::new(),
        Some(t) if (known.templates)(t.get_ref()) => t.get_ref().clone(),
        Some(t) => return src.err(t.span(), &g("holds_coupon"), format!("unknown coupon template {:?}", t.get_ref())),
    };
    let days = |v: &Option<S<i64>>, n: &str| -> CoreResult<i64> { Ok(src.opt_int(v, &g(n), 1..=3650)?.unwrap_or(0)) };
    let audience = CampaignAudience {
        tiers: names(src, &a.tiers, &g("tiers"), Some(&is_tier), "tier")?,
        tags: names(src, &a.tags, &g("tags"), None, "tag")?,
        segments: names(src, &a.segments, &g("segments"), None, "segment")?,
        bu,
        formats: names(src, &a.formats, &g("formats"), Some(known.formats), "format")?,
        dormant_days: days(&a.dormant_days, "dormant_days")?,
        paid_within_days: days(&a.paid_within_days, "paid_within_days")?,
        birthday_month: a.birthday_month.as_ref().is_some_and(|b| *b.get_ref()),
        points_expiring_within_days: days(&a.points_expiring_within_days, "points_expiring_within_days")?,
        min_points: src.opt_int(&a.min_points, &g("min_points"), 1..=1_000_000_000)?.unwrap_or(0),
        registered_within_days: days(&a.registered_within_days, "registered_within_days")?,
        holds_coupon,
    };
    if audience.dormant_days > 0 && audience.paid_within_days > 0 && audience.paid_within_days <= audience.dormant_days {
        let span = a.paid_within_days.as_ref().map_or(0..0, |x| x.span());
        return src.err(span, &g("paid_within_days"), "a dormant audience's paid_within_days must exceed dormant_days");
    }
    Ok(audience)
}

/// `[audiences.<id>]`: saved audiences, by id (campaigns name one with `audience_id`; the
/// console previews and sends to them).
pub(crate) fn audiences(
    src: &Source,
    raw: &std::collections::BTreeMap<String, RawCampaignAudience>,
    known: &ScheduledNames,
) -> CoreResult<std::collections::BTreeMap<String, CampaignAudience>> {
    let mut out = std::collections::BTreeMap::new();
    for (id, a) in raw {
        crate::events::check_id("audiences", id).or_else(|e| src.err(0..0, &format!("audiences.{id}"), e.reason().to_string()))?;
        out.insert(id.clone(), audience_of(src, a, &format!("audiences.{id}"), known)?);
    }
    Ok(out)
}

/// `[[scheduled_campaigns]]`: checked at the line and field of each mistake.
pub(crate) fn scheduled(
    src: &Source,
    raw: &[RawScheduled],
    saved: &std::collections::BTreeMap<String, CampaignAudience>,
    known: &ScheduledNames,
) -> CoreResult<Vec<ScheduledCampaign>> {
    let mut out: Vec<ScheduledCampaign> = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        let f = |n: &str| format!("scheduled_campaigns[{i}].{n}");
        let id = src.id(&c.id, &f("id"))?;
        if out.iter().any(|x| x.id == id) {
            return src.err(c.id.span(), &f("id"), "is a duplicate");
        }
        if id.len() > 24 {
            return src.err(c.id.span(), &f("id"), "at most 24 characters (it names each run's pushes)");
        }
        let schedule = match c.every.get_ref().as_str() {
            "day" => Schedule::Day { minute: minute_of_day(src, &c.at, &f("at"))? },
            "week" => {
                let Some(w) = &c.weekday else {
                    return src.err(c.every.span(), &f("weekday"), "a weekly campaign names its weekday (mon-sun)");
                };
                let weekday = super::WEEKDAYS.iter().position(|x| x.eq_ignore_ascii_case(w.get_ref()));
                let Some(weekday) = weekday else {
                    return src.err(w.span(), &f("weekday"), "must be one of mon, tue, wed, thu, fri, sat, sun");
                };
                Schedule::Week { weekday: weekday as i64, minute: minute_of_day(src, &c.at, &f("at"))? }
            }
            "month" => {
                let Some(d) = &c.day else {
                    return src.err(c.every.span(), &f("day"), "a monthly campaign names its day (1-28)");
                };
                Schedule::Month { day: src.int(d, &f("day"), 1..=28)?, minute: minute_of_day(src, &c.at, &f("at"))? }
            }
            "once" => Schedule::Once {
                at_ms: parse_instant_ms(c.at.get_ref()).or_else(|e| src.err(c.at.span(), &f("at"), e.reason().to_string()))?,
            },
            _ => return src.err(c.every.span(), &f("every"), "must be \"day\", \"week\", \"month\" or \"once\""),
        };
        if let (Some(w), false) = (&c.weekday, matches!(schedule, Schedule::Week { .. })) {
            return src.err(w.span(), &f("weekday"), "only a weekly campaign (every = \"week\") has a weekday");
        }
        if let (Some(d), false) = (&c.day, matches!(schedule, Schedule::Month { .. })) {
            return src.err(d.span(), &f("day"), "only a monthly campaign (every = \"month\") has a day");
        }
        let from_ms = instant(src, &c.from, &f("from"))?;
        let to_ms = instant(src, &c.to, &f("to"))?;
        if let (Some(a), Some(b), Some(t)) = (from_ms, to_ms, &c.to) {
            if b <= a {
                return src.err(t.span(), &f("to"), "must be after from");
            }
        }
        let action = match (&c.coupon, &c.notice) {
            (Some(t), None) => {
                if !(known.templates)(t.get_ref()) {
                    return src.err(t.span(), &f("coupon"), format!("unknown coupon template {:?}", t.get_ref()));
                }
                CampaignAction::Coupon { template: t.get_ref().clone() }
            }
            (None, Some(n)) => {
                let m = n.get_ref().trim();
                if m.is_empty() || m.chars().count() > 500 {
                    return src.err(n.span(), &f("notice"), "a message of 1-500 characters");
                }
                CampaignAction::Notice { message: m.to_string() }
            }
            (Some(t), Some(_)) => return src.err(t.span(), &f("coupon"), "set coupon or notice, not both"),
            (None, None) => return src.err(c.id.span(), &f("coupon"), "set what the campaign gives: coupon or notice"),
        };
        let audience = match (&c.audience_id, &c.audience) {
            (Some(name), None) => match saved.get(name.get_ref()) {
                Some(a) => a.clone(),
                None => return src.err(name.span(), &f("audience_id"), format!("no [audiences.{}]", name.get_ref())),
            },
            (None, a) => audience_of(src, &a.as_ref().cloned().unwrap_or_default(), &f("audience"), known)?,
            (Some(name), Some(_)) => {
                return src.err(name.span(), &f("audience_id"), "name a saved audience or define one, not both")
            }
        };
        out.push(ScheduledCampaign {
            name: c.name.as_ref().map_or_else(|| id.clone(), |n| n.get_ref().clone()),
            once_per_dormancy: audience.dormant_days > 0,
            id,
            schedule,
            from_ms,
            to_ms,
            audience_id: c.audience_id.as_ref().map_or_else(String::new, |a| a.get_ref().clone()),
            audience,
            action,
            capped: c.capped.as_ref().is_none_or(|b| *b.get_ref()),
        });
    }
    Ok(out)
}
