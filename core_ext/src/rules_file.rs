//! The rules file as written (TOML) and its validation into a `RuleSet`.
//! Every error names the file, the line and the field.

use crate::errors::{CoreError, CoreResult};
use crate::rules::*;
use crate::time::{local_day_of_date, parse_instant_ms};
use serde::Deserialize;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::ops::Range;
use toml::Spanned;

pub(crate) mod engagement;

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuleSet {
    version: S<String>,
    #[serde(default = "default_rounding")]
    rounding: Rounding,
    #[serde(default)]
    utc_offset_minutes: Option<S<i64>>,
    #[serde(default)]
    guest_credit_days: Option<S<i64>>,
    #[serde(default)]
    caps: Option<RawCaps>,
    formats: HashMap<String, RawRate>,
    #[serde(default)]
    business_units: Vec<RawBusinessUnit>,
    #[serde(default)]
    merchants: Vec<RawMerchant>,
    #[serde(default)]
    categories: Vec<RawCategory>,
    #[serde(default)]
    tier_policy: Option<RawTierPolicy>,
    tiers: S<Vec<RawTier>>,
    #[serde(default)]
    campaign_policy: Option<RawCampaignPolicy>,
    #[serde(default)]
    campaigns: Vec<RawCampaign>,
    #[serde(default)]
    behaviour: Option<RawBehaviour>,
    #[serde(default)]
    wallet: Option<RawWallet>,
    #[serde(default)]
    settlement: Option<RawSettlement>,
    #[serde(default)]
    parking: Option<RawParking>,
    #[serde(default)]
    coupon_templates: Vec<RawCouponTemplate>,
    #[serde(default)]
    triggers: Vec<RawTrigger>,
    #[serde(default)]
    games: Vec<engagement::RawGame>,
    #[serde(default)]
    sign_in_plans: Vec<engagement::RawSignInPlan>,
    #[serde(default)]
    burn_promotions: Vec<engagement::RawBurnPromotion>,
    #[serde(default)]
    partners: Vec<engagement::RawPartner>,
    #[serde(default)]
    stored_value: Option<engagement::RawStoredValue>,
    #[serde(default)]
    channels: Vec<engagement::RawChannel>,
    #[serde(default)]
    profile_rewards: Vec<engagement::RawProfileReward>,
    #[serde(default)]
    leaderboards: Vec<engagement::RawLeaderboard>,
    #[serde(default)]
    mall_items: Vec<engagement::RawMallItem>,
    #[serde(default)]
    receipts: Option<engagement::RawReceipts>,
    #[serde(default)]
    member_events: Vec<engagement::RawGathering>,
    #[serde(default)]
    scheduled_campaigns: Vec<engagement::RawScheduled>,
    #[serde(default)]
    frequency_cap: Option<engagement::RawFrequencyCap>,
    #[serde(default)]
    audiences: std::collections::BTreeMap<String, engagement::RawCampaignAudience>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCouponTemplate {
    id: S<String>,
    kind: S<String>,
    percent_off: Option<S<i64>>,
    max_off_fen: Option<S<i64>>,
    amount_off_fen: Option<S<i64>>,
    item: Option<S<String>>,
    item_value_fen: Option<S<i64>>,
    parking_minutes: Option<S<i64>>,
    threshold_fen: Option<S<i64>>,
    valid_days: Option<S<i64>>,
    valid_from: Option<S<String>>,
    valid_to: Option<S<String>>,
    stock: Option<S<i64>>,
    per_member_limit: Option<S<i64>>,
    bus: Option<S<Vec<String>>>,
    merchants: Option<S<Vec<String>>>,
    categories: Option<S<Vec<String>>>,
    merchant_share_pct: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    id: S<String>,
    on: S<String>,
    coupon: S<String>,
    dormant_days: Option<S<i64>>,
    min_amount_fen: Option<S<i64>>,
    min_total_fen: Option<S<i64>>,
    window_days: Option<S<i64>>,
    to_tiers: Option<S<Vec<String>>>,
    formats: Option<S<Vec<String>>>,
    tiers: Option<S<Vec<String>>>,
    tags: Option<S<Vec<String>>>,
    max_per_member: Option<S<i64>>,
    per_days: Option<S<i64>>,
    budget: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParking {
    #[serde(default)]
    car_parks: Vec<RawCarPark>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCarPark {
    bu: S<String>,
    free_minutes: S<i64>,
    price_per_hour_fen: S<i64>,
    daily_cap_fen: S<i64>,
    spend_bu: Option<S<String>>,
    #[serde(default)]
    spend_steps: Vec<RawSpendStep>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpendStep {
    min_spend_fen: S<i64>,
    free_minutes: S<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWallet {
    validity_months: Option<S<i64>>,
    reminder_days: Option<S<i64>>,
    refund_shortfall: Option<Shortfall>,
    lottery_cost_points: Option<S<i64>>,
    default_rate: Option<RawRedemptionRate>,
    #[serde(default)]
    bu_rates: Vec<RawBuRate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedemptionRate {
    points: S<i64>,
    value_fen: S<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuRate {
    bu: S<String>,
    points: S<i64>,
    value_fen: S<i64>,
}

fn default_rounding() -> Rounding {
    Rounding::Floor
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaps {
    per_transaction_points: Option<S<i64>>,
    per_member_daily_points: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    points: S<i64>,
    per_fen: S<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBusinessUnit {
    id: S<String>,
    format: S<String>,
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    points: Option<S<i64>>,
    per_fen: Option<S<i64>>,
    max_payment_fen: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMerchant {
    id: S<String>,
    bu: S<String>,
    category: S<String>,
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    points: Option<S<i64>>,
    per_fen: Option<S<i64>>,
    commission_bp: Option<S<i64>>,
    commission_min_fen: Option<S<i64>>,
    max_payment_fen: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettlement {
    default_fund_fen_per_100: Option<S<i64>>,
    default_commission_bp: Option<S<i64>>,
    breakage_to: Option<S<String>>,
    breakage_fen_per_100: Option<S<i64>>,
    split_rounding: Option<S<String>>,
    #[serde(default)]
    bus: Vec<RawSettlementBu>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettlementBu {
    bu: S<String>,
    fund_fen_per_100: Option<S<i64>>,
    paid_fen_per_100: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCategory {
    id: S<String>,
    #[serde(default)]
    formats: Option<S<Vec<String>>>,
    #[serde(default)]
    excluded: bool,
    points: Option<S<i64>>,
    per_fen: Option<S<i64>>,
    return_window_days: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTierPolicy {
    window_months: Option<S<i64>>,
    review_after_days: Option<S<i64>>,
    downgrade: Option<Downgrade>,
    on_refund: Option<OnRefund>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    id: S<String>,
    multiplier_pct: S<i64>,
    qualify_points: Option<S<i64>>,
    qualify_spend_fen: Option<S<i64>>,
    #[serde(default)]
    free_parking_minutes: Option<S<i64>>,
    #[serde(default)]
    redemption_bonus_pct: Option<S<i64>>,
    #[serde(default)]
    birthday_multiplier_pct: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCampaignPolicy {
    stacking: Stacking,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCampaign {
    id: S<String>,
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    multiplier_pct: Option<S<i64>>,
    bonus_points: Option<S<i64>>,
    starts_at: Option<S<String>>,
    ends_at: Option<S<String>>,
    dates: Option<S<Vec<String>>>,
    weekdays: Option<S<Vec<String>>>,
    hours: Option<S<Vec<i64>>>,
    min_amount_fen: Option<S<i64>>,
    bus: Option<S<Vec<String>>>,
    formats: Option<S<Vec<String>>>,
    merchants: Option<S<Vec<String>>>,
    categories: Option<S<Vec<String>>>,
    tiers: Option<S<Vec<String>>>,
    tags: Option<S<Vec<String>>>,
    budget_points: Option<S<i64>>,
    per_member_cap_points: Option<S<i64>>,
    enrolled_by: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBehaviour {
    registration_gift: Option<S<i64>>,
    birthday_month_bonus: Option<S<i64>>,
    sign_in: Option<RawSignIn>,
    spend_streak: Option<RawSpendStreak>,
    monthly_task: Option<RawMonthlyTask>,
    referral: Option<RawLimited>,
    review: Option<RawReview>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStreakBonus {
    days: S<i64>,
    points: S<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignIn {
    points: S<i64>,
    #[serde(default)]
    streak_bonuses: Vec<RawStreakBonus>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpendStreak {
    days: S<i64>,
    points: S<i64>,
    #[serde(default)]
    min_amount_fen: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonthlyTask {
    spend_fen: S<i64>,
    points: S<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimited {
    points: S<i64>,
    max_per_month: S<i64>,
    #[serde(default)]
    max_total: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReview {
    points: S<i64>,
    max_per_day: S<i64>,
}

// ---- validation helpers ----------------------------------------------------------

pub(crate) struct Source<'a> {
    pub(crate) file: &'a str,
    pub(crate) text: &'a str,
}

impl Source<'_> {
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }

    pub(crate) fn err<T>(&self, span: Range<usize>, field: &str, reason: impl Into<String>) -> CoreResult<T> {
        Err(CoreError::InvalidRules {
            file: self.file.to_string(),
            line: self.line_of(span.start),
            field: field.to_string(),
            reason: reason.into(),
        })
    }

    /// The dotted path of the key on the line of `offset`, from the nearest table
    /// header above it: used to name the field of a serde error.
    pub(crate) fn field_at(&self, offset: usize) -> String {
        let start = offset.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..].find('\n').map_or(self.text.len(), |i| start + i);
        let line = self.text[line_start..line_end].trim();
        let key = line.split('=').next().unwrap_or("").trim();
        let header = self.text[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').to_string());
        match (header, key.is_empty() || line.starts_with('[')) {
            (Some(h), false) => format!("{h}.{key}"),
            (Some(h), true) => h,
            (None, false) => key.to_string(),
            (None, true) => "(top level)".to_string(),
        }
    }

    pub(crate) fn int(&self, v: &S<i64>, field: &str, range: std::ops::RangeInclusive<i64>) -> CoreResult<i64> {
        if !range.contains(v.get_ref()) {
            return self.err(
                v.span(),
                field,
                format!("must be between {} and {}, got {}", range.start(), range.end(), v.get_ref()),
            );
        }
        Ok(*v.get_ref())
    }

    pub(crate) fn opt_int(
        &self,
        v: &Option<S<i64>>,
        field: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> CoreResult<Option<i64>> {
        v.as_ref().map(|v| self.int(v, field, range)).transpose()
    }

    pub(crate) fn id(&self, v: &S<String>, field: &str) -> CoreResult<String> {
        crate::events::check_id(field, v.get_ref()).or_else(|e| self.err(v.span(), field, e.reason().to_string()))?;
        Ok(v.get_ref().clone())
    }

    pub(crate) fn rate(&self, field: &str, points: &S<i64>, per_fen: &S<i64>) -> CoreResult<Rate> {
        Ok(Rate {
            points: self.int(points, &format!("{field}.points"), 0..=10_000)?,
            per_fen: self.int(per_fen, &format!("{field}.per_fen"), 1..=100_000_000)?,
        })
    }

    pub(crate) fn opt_rate(
        &self,
        field: &str,
        at: Range<usize>,
        points: &Option<S<i64>>,
        per_fen: &Option<S<i64>>,
    ) -> CoreResult<Option<Rate>> {
        match (points, per_fen) {
            (None, None) => Ok(None),
            (Some(p), Some(f)) => self.rate(field, p, f).map(Some),
            _ => self.err(at, field, "set both points and per_fen, or neither"),
        }
    }

    /// A list of ids that must each be one of `known` (when given).
    pub(crate) fn id_set(
        &self,
        v: &Option<S<Vec<String>>>,
        field: &str,
        known: Option<&dyn Fn(&str) -> bool>,
        what: &str,
    ) -> CoreResult<Option<HashSet<String>>> {
        let Some(list) = v else { return Ok(None) };
        if list.get_ref().is_empty() {
            return self.err(list.span(), field, "must not be empty (leave it out to match all)");
        }
        for item in list.get_ref() {
            crate::events::check_id(field, item).or_else(|e| self.err(list.span(), field, e.reason().to_string()))?;
            if let Some(known) = known {
                if !known(item) {
                    return self.err(list.span(), field, format!("unknown {what} {item:?}"));
                }
            }
        }
        Ok(Some(list.get_ref().iter().cloned().collect()))
    }
}

pub(crate) const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

// ---- loading -------------------------------------------------------------------

impl RuleSet {
    /// Parses and validates a TOML rule set. `file` is only used in error messages.
    pub fn from_toml(text: &str, file: &str) -> CoreResult<RuleSet> {
        let src = Source { file, text };
        let raw: RawRuleSet = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            CoreError::InvalidRules {
                file: file.to_string(),
                line: src.line_of(offset),
                field: src.field_at(offset),
                reason: e.message().trim().to_string(),
            }
        })?;
        if raw.version.get_ref().trim().is_empty() {
            return src.err(raw.version.span(), "version", "must not be empty");
        }
        let utc_offset_minutes = src.opt_int(&raw.utc_offset_minutes, "utc_offset_minutes", -720..=840)?.unwrap_or(480);
        let guest_credit_days = src.opt_int(&raw.guest_credit_days, "guest_credit_days", 0..=366)?.unwrap_or(0);
        let (per_transaction_cap, per_member_daily_cap) = match &raw.caps {
            None => (None, None),
            Some(c) => (
                src.opt_int(&c.per_transaction_points, "caps.per_transaction_points", 1..=i64::MAX / 4)?,
                src.opt_int(&c.per_member_daily_points, "caps.per_member_daily_points", 1..=i64::MAX / 4)?,
            ),
        };

        let mut formats = HashMap::default();
        for (name, rate) in &raw.formats {
            let field = format!("formats.{name}");
            crate::events::check_id(&field, name).or_else(|e| src.err(rate.points.span(), &field, e.reason().to_string()))?;
            formats.insert(name.clone(), src.rate(&field, &rate.points, &rate.per_fen)?);
        }

        let mut business_units = HashMap::default();
        for (i, bu) in raw.business_units.iter().enumerate() {
            let field = format!("business_units[{i}]");
            let id = src.id(&bu.id, &format!("{field}.id"))?;
            if !formats.contains_key(bu.format.get_ref()) {
                return src.err(
                    bu.format.span(),
                    &format!("{field}.format"),
                    format!("unknown format {:?} (define it under [formats])", bu.format.get_ref()),
                );
            }
            let rate = src.opt_rate(&field, bu.id.span(), &bu.points, &bu.per_fen)?;
            let max_payment_fen =
                src.opt_int(&bu.max_payment_fen, &format!("{field}.max_payment_fen"), 1..=crate::events::MAX_AMOUNT_FEN)?;
            let unit = BusinessUnit { id: id.clone(), format: bu.format.get_ref().clone(), rate, max_payment_fen };
            if business_units.insert(id.clone(), unit).is_some() {
                return src.err(bu.id.span(), &format!("{field}.id"), format!("duplicate business unit {id:?}"));
            }
        }

        let mut merchants = HashMap::default();
        for (i, m) in raw.merchants.iter().enumerate() {
            let field = format!("merchants[{i}]");
            let id = src.id(&m.id, &format!("{field}.id"))?;
            if !business_units.contains_key(m.bu.get_ref()) {
                return src.err(m.bu.span(), &format!("{field}.bu"), format!("unknown business unit {:?}", m.bu.get_ref()));
            }
            let category = src.id(&m.category, &format!("{field}.category"))?;
            let rate = src.opt_rate(&field, m.id.span(), &m.points, &m.per_fen)?;
            let merchant = Merchant {
                id: id.clone(),
                bu: m.bu.get_ref().clone(),
                category,
                rate,
                commission_bp: src.opt_int(&m.commission_bp, &format!("{field}.commission_bp"), 0..=10_000)?,
                commission_min_fen: src
                    .opt_int(&m.commission_min_fen, &format!("{field}.commission_min_fen"), 0..=100_000_000)?
                    .unwrap_or(0),
                max_payment_fen: src.opt_int(
                    &m.max_payment_fen,
                    &format!("{field}.max_payment_fen"),
                    1..=crate::events::MAX_AMOUNT_FEN,
                )?,
            };
            if merchants.insert(id.clone(), merchant).is_some() {
                return src.err(m.id.span(), &format!("{field}.id"), format!("duplicate merchant {id:?}"));
            }
        }

        let mut categories: HashMap<String, Vec<CategoryRule>> = HashMap::default();
        for (i, cat) in raw.categories.iter().enumerate() {
            let field = format!("categories[{i}]");
            let id = src.id(&cat.id, &format!("{field}.id"))?;
            let is_format = |f: &str| formats.contains_key(f);
            let scope = src.id_set(&cat.formats, &format!("{field}.formats"), Some(&is_format), "format")?;
            let rate = src.opt_rate(&field, cat.id.span(), &cat.points, &cat.per_fen)?;
            if cat.excluded && rate.is_some() {
                return src.err(cat.id.span(), &field, "an excluded category cannot also have a rate");
            }
            if !cat.excluded && rate.is_none() {
                return src.err(cat.id.span(), &field, "set excluded = true, or points and per_fen");
            }
            let return_window_days =
                src.opt_int(&cat.return_window_days, &format!("{field}.return_window_days"), 0..=365)?.unwrap_or(0);
            categories.entry(id).or_default().push(CategoryRule {
                formats: scope,
                excluded: cat.excluded,
                rate,
                return_window_days,
            });
        }

        let tiers = load_tiers(&src, &raw.tiers)?;
        let tier_policy = match &raw.tier_policy {
            None => TierPolicy {
                window_months: 12,
                review_after_days: 365,
                downgrade: Downgrade::ToQualified,
                on_refund: OnRefund::Recheck,
            },
            Some(p) => TierPolicy {
                window_months: src.opt_int(&p.window_months, "tier_policy.window_months", 1..=60)?.unwrap_or(12) as i32,
                review_after_days: src
                    .opt_int(&p.review_after_days, "tier_policy.review_after_days", 1..=3660)?
                    .unwrap_or(365),
                downgrade: p.downgrade.unwrap_or(Downgrade::ToQualified),
                on_refund: p.on_refund.unwrap_or(OnRefund::Recheck),
            },
        };

        let stacking = raw.campaign_policy.as_ref().map_or(Stacking::BestOf, |p| p.stacking);
        let mut campaigns = Vec::new();
        let mut seen = HashSet::default();
        for (i, c) in raw.campaigns.iter().enumerate() {
            let campaign = load_campaign(&src, i, c, &business_units, &formats, &tiers, utc_offset_minutes)?;
            if !seen.insert(campaign.id.clone()) {
                return src.err(c.id.span(), &format!("campaigns[{i}].id"), format!("duplicate campaign {:?}", campaign.id));
            }
            campaigns.push(campaign);
        }
        let mut campaigns_by_bu: HashMap<String, Vec<usize>> = HashMap::default();
        for bu in business_units.values() {
            let list = campaigns
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    c.filter.bus.as_ref().is_none_or(|s| s.contains(&bu.id))
                        && c.filter.formats.as_ref().is_none_or(|s| s.contains(&bu.format))
                })
                .map(|(i, _)| i)
                .collect();
            campaigns_by_bu.insert(bu.id.clone(), list);
        }

        let behaviour = load_behaviour(&src, raw.behaviour.as_ref())?;
        let wallet = load_wallet(&src, raw.wallet.as_ref(), &business_units)?;
        let settlement = load_settlement(&src, raw.settlement.as_ref(), &business_units)?;
        let mut car_parks = HashMap::default();
        for (i, c) in raw.parking.iter().flat_map(|p| p.car_parks.iter()).enumerate() {
            let f = |n: &str| format!("parking.car_parks[{i}].{n}");
            if !business_units.contains_key(c.bu.get_ref()) {
                return src.err(c.bu.span(), &f("bu"), format!("unknown business unit {:?}", c.bu.get_ref()));
            }
            if let Some(sb) = &c.spend_bu {
                if !business_units.contains_key(sb.get_ref()) {
                    return src.err(sb.span(), &f("spend_bu"), format!("unknown business unit {:?}", sb.get_ref()));
                }
            }
            let mut steps = Vec::new();
            for (k, st) in c.spend_steps.iter().enumerate() {
                let step = (
                    src.int(&st.min_spend_fen, &f(&format!("spend_steps[{k}].min_spend_fen")), 0..=i64::MAX / 4)?,
                    src.int(&st.free_minutes, &f(&format!("spend_steps[{k}].free_minutes")), 0..=10_080)?,
                );
                if steps.last().is_some_and(|p: &(i64, i64)| p.0 >= step.0) {
                    return src.err(st.min_spend_fen.span(), &f("spend_steps"), "list steps by increasing min_spend_fen");
                }
                steps.push(step);
            }
            let park = crate::parking_rules::CarPark {
                bu: c.bu.get_ref().clone(),
                free_minutes: src.int(&c.free_minutes, &f("free_minutes"), 0..=1_440)?,
                price_per_hour_fen: src.int(&c.price_per_hour_fen, &f("price_per_hour_fen"), 0..=100_000)?,
                daily_cap_fen: src.int(&c.daily_cap_fen, &f("daily_cap_fen"), 0..=10_000_000)?,
                spend_bu: c.spend_bu.as_ref().map(|s| s.get_ref().clone()),
                spend_steps: steps,
            };
            car_parks.insert(park.bu.clone(), park);
        }

        let mut coupon_templates = HashMap::default();
        for (i, t) in raw.coupon_templates.iter().enumerate() {
            let tpl = load_coupon_template(&src, i, t, &business_units)?;
            if coupon_templates.contains_key(&tpl.id) {
                return src.err(t.id.span(), &format!("coupon_templates[{i}].id"), "is a duplicate");
            }
            coupon_templates.insert(tpl.id.clone(), tpl);
        }
        let mut triggers: Vec<crate::coupon_rules::Trigger> = Vec::new();
        for (i, t) in raw.triggers.iter().enumerate() {
            let trig = load_trigger(&src, i, t, &coupon_templates, &formats, &tiers)?;
            if triggers.iter().any(|x| x.id == trig.id) {
                return src.err(t.id.span(), &format!("triggers[{i}].id"), "is a duplicate");
            }
            triggers.push(trig);
        }

        let mut engagement = engagement::load(
            &src,
            engagement::RawEngagement {
                games: &raw.games,
                sign_in_plans: &raw.sign_in_plans,
                burn_promotions: &raw.burn_promotions,
                partners: &raw.partners,
                stored_value: raw.stored_value.as_ref(),
                channels: &raw.channels,
                profile_rewards: &raw.profile_rewards,
                leaderboards: &raw.leaderboards,
                mall_items: &raw.mall_items,
            },
            &business_units,
            &formats,
            &coupon_templates,
            &tiers.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        )?;
        engagement.gatherings =
            engagement::gatherings(&src, &raw.member_events, &tiers.iter().map(|t| t.id.clone()).collect::<Vec<_>>())?;
        let tier_ids = tiers.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
        let names = engagement::ScheduledNames {
            tiers: &tier_ids,
            bus: &business_units,
            formats: &|f: &str| formats.contains_key(f),
            templates: &|t: &str| coupon_templates.contains_key(t),
        };
        engagement.audiences = engagement::audiences(&src, &raw.audiences, &names)?;
        engagement.scheduled = engagement::scheduled(&src, &raw.scheduled_campaigns, &engagement.audiences, &names)?;
        // An earning campaign for the members a scheduled campaign reached names one in force.
        for (i, c) in raw.campaigns.iter().enumerate() {
            if let Some(e) = &c.enrolled_by {
                if !engagement.scheduled.iter().any(|s| &s.id == e.get_ref()) {
                    return src.err(e.span(), &format!("campaigns[{i}].enrolled_by"),
                                   format!("no [[scheduled_campaigns]] {:?}", e.get_ref()));
                }
            }
        }
        engagement.frequency_cap = raw.frequency_cap.as_ref().map(|c| engagement::frequency_cap(&src, c)).transpose()?;
        engagement.receipts = match &raw.receipts {
            Some(r) => Some(engagement::receipts(&src, r, &|m: &str| merchants.contains_key(m))?),
            None => None,
        };
        Ok(RuleSet {
            engagement,
            coupon_templates,
            triggers,
            version: raw.version.get_ref().trim().to_string(),
            rounding: raw.rounding,
            utc_offset_minutes,
            per_transaction_cap,
            per_member_daily_cap,
            formats,
            business_units,
            merchants,
            categories,
            tiers,
            tier_policy,
            stacking,
            campaigns,
            campaigns_by_bu,
            behaviour,
            guest_credit_days,
            wallet,
            settlement,
            car_parks,
        })
    }
}

fn load_tiers(src: &Source, raw: &S<Vec<RawTier>>) -> CoreResult<Vec<Tier>> {
    if raw.get_ref().is_empty() {
        return src.err(raw.span(), "tiers", "at least one tier is required (the first is the default)");
    }
    let mut tiers: Vec<Tier> = Vec::new();
    for (i, t) in raw.get_ref().iter().enumerate() {
        let field = format!("tiers[{i}]");
        let id = src.id(&t.id, &format!("{field}.id"))?;
        if tiers.iter().any(|x| x.id == id) {
            return src.err(t.id.span(), &format!("{field}.id"), format!("duplicate tier {id:?}"));
        }
        let tier = Tier {
            id,
            multiplier_pct: src.int(&t.multiplier_pct, &format!("{field}.multiplier_pct"), 0..=10_000)?,
            qualify_points: src.opt_int(&t.qualify_points, &format!("{field}.qualify_points"), 0..=i64::MAX / 4)?,
            qualify_spend_fen: src.opt_int(&t.qualify_spend_fen, &format!("{field}.qualify_spend_fen"), 0..=i64::MAX / 4)?,
            free_parking_minutes: src
                .opt_int(&t.free_parking_minutes, &format!("{field}.free_parking_minutes"), 0..=10_080)?
                .unwrap_or(0),
            redemption_bonus_pct: src
                .opt_int(&t.redemption_bonus_pct, &format!("{field}.redemption_bonus_pct"), 0..=1_000)?
                .unwrap_or(0),
            birthday_multiplier_pct: src
                .opt_int(&t.birthday_multiplier_pct, &format!("{field}.birthday_multiplier_pct"), 100..=10_000)?
                .unwrap_or(100),
        };
        if i == 0 && (tier.qualify_points.is_some() || tier.qualify_spend_fen.is_some()) {
            return src.err(t.id.span(), &field, "the first tier is the default and takes no qualification");
        }
        if i > 0 && tier.qualify_points.is_none() && tier.qualify_spend_fen.is_none() {
            return src.err(t.id.span(), &field, "set qualify_points and/or qualify_spend_fen");
        }
        if let Some(prev) = tiers.last() {
            let lower = |a: Option<i64>, b: Option<i64>| matches!((a, b), (Some(a), Some(b)) if a < b);
            if lower(tier.qualify_points, prev.qualify_points) || lower(tier.qualify_spend_fen, prev.qualify_spend_fen) {
                return src.err(t.id.span(), &field, "tiers must be listed lowest first (thresholds may not decrease)");
            }
        }
        tiers.push(tier);
    }
    Ok(tiers)
}

fn load_campaign(
    src: &Source,
    i: usize,
    c: &RawCampaign,
    bus: &HashMap<String, BusinessUnit>,
    formats: &HashMap<String, Rate>,
    tiers: &[Tier],
    utc_offset_minutes: i64,
) -> CoreResult<Campaign> {
    let f = |name: &str| format!("campaigns[{i}].{name}");
    let id = src.id(&c.id, &f("id"))?;
    let kind = match (&c.multiplier_pct, &c.bonus_points) {
        (Some(m), None) => CampaignKind::Multiplier(src.int(m, &f("multiplier_pct"), 101..=10_000)?),
        (None, Some(b)) => CampaignKind::Bonus(src.int(b, &f("bonus_points"), 1..=100_000_000)?),
        _ => return src.err(c.id.span(), &f("multiplier_pct"), "set exactly one of multiplier_pct or bonus_points"),
    };
    let instant = |v: &Option<S<String>>, name: &str| -> CoreResult<Option<i64>> {
        v.as_ref()
            .map(|s| parse_instant_ms(s.get_ref()).or_else(|e| src.err(s.span(), &f(name), e.reason().to_string())))
            .transpose()
    };
    let starts_at_ms = instant(&c.starts_at, "starts_at")?;
    let ends_at_ms = instant(&c.ends_at, "ends_at")?;
    if let (Some(a), Some(b), Some(span)) = (starts_at_ms, ends_at_ms, c.ends_at.as_ref().map(|s| s.span())) {
        if b <= a {
            return src.err(span, &f("ends_at"), "must be after starts_at");
        }
    }
    let dates = match &c.dates {
        None => None,
        Some(list) => {
            let mut set = HashSet::default();
            for d in list.get_ref() {
                let day = local_day_of_date(d).ok_or(()).or_else(|_| {
                    src.err(list.span(), &f("dates"), format!("{d:?} is not a date like 2026-11-11"))
                })?;
                set.insert(day);
            }
            Some(set)
        }
    };
    let _ = utc_offset_minutes;
    let weekdays = match &c.weekdays {
        None => None,
        Some(list) => {
            let mut set = HashSet::default();
            for w in list.get_ref() {
                let idx = WEEKDAYS.iter().position(|x| x.eq_ignore_ascii_case(w)).ok_or(()).or_else(|_| {
                    src.err(list.span(), &f("weekdays"), format!("{w:?} is not one of mon tue wed thu fri sat sun"))
                })?;
                set.insert(idx as u32);
            }
            Some(set)
        }
    };
    let hours = match &c.hours {
        None => None,
        Some(h) => match h.get_ref().as_slice() {
            [from, to] if (0..24).contains(from) && (1..=24).contains(to) && from < to => Some((*from as u32, *to as u32)),
            _ => return src.err(h.span(), &f("hours"), "must be [from, to) with 0 <= from < to <= 24"),
        },
    };
    let is_bu = |x: &str| bus.contains_key(x);
    let is_format = |x: &str| formats.contains_key(x);
    let is_tier = |x: &str| tiers.iter().any(|t| t.id == x);
    Ok(Campaign {
        id,
        kind,
        starts_at_ms,
        ends_at_ms,
        dates,
        weekdays,
        hours,
        min_amount_fen: src.opt_int(&c.min_amount_fen, &f("min_amount_fen"), 0..=i64::MAX / 4)?.unwrap_or(0),
        filter: CampaignFilter {
            bus: src.id_set(&c.bus, &f("bus"), Some(&is_bu), "business unit")?,
            formats: src.id_set(&c.formats, &f("formats"), Some(&is_format), "format")?,
            merchants: src.id_set(&c.merchants, &f("merchants"), None, "merchant")?,
            categories: src.id_set(&c.categories, &f("categories"), None, "category")?,
            tiers: src.id_set(&c.tiers, &f("tiers"), Some(&is_tier), "tier")?,
            tags: src.id_set(&c.tags, &f("tags"), None, "tag")?,
            enrolled_by: c.enrolled_by.as_ref().map(|e| src.id(e, &f("enrolled_by"))).transpose()?,
        },
        budget_points: src.opt_int(&c.budget_points, &f("budget_points"), 1..=i64::MAX / 4)?,
        per_member_cap_points: src.opt_int(&c.per_member_cap_points, &f("per_member_cap_points"), 1..=i64::MAX / 4)?,
    })
}

fn load_behaviour(src: &Source, raw: Option<&RawBehaviour>) -> CoreResult<Behaviour> {
    let Some(b) = raw else { return Ok(Behaviour::default()) };
    let pts = 0..=100_000_000;
    let mut out = Behaviour {
        registration_gift: src.opt_int(&b.registration_gift, "behaviour.registration_gift", pts.clone())?.unwrap_or(0),
        birthday_month_bonus: src
            .opt_int(&b.birthday_month_bonus, "behaviour.birthday_month_bonus", pts.clone())?
            .unwrap_or(0),
        ..Behaviour::default()
    };
    if let Some(s) = &b.sign_in {
        out.sign_in_points = src.int(&s.points, "behaviour.sign_in.points", pts.clone())?;
        for (i, sb) in s.streak_bonuses.iter().enumerate() {
            let f = format!("behaviour.sign_in.streak_bonuses[{i}]");
            let bonus = StreakBonus {
                days: src.int(&sb.days, &format!("{f}.days"), 2..=366)?,
                points: src.int(&sb.points, &format!("{f}.points"), pts.clone())?,
            };
            if out.sign_in_streaks.iter().any(|x| x.days >= bonus.days) {
                return src.err(sb.days.span(), &format!("{f}.days"), "streak bonuses must be listed by increasing days");
            }
            out.sign_in_streaks.push(bonus);
        }
    }
    if let Some(s) = &b.spend_streak {
        let bonus = StreakBonus {
            days: src.int(&s.days, "behaviour.spend_streak.days", 2..=366)?,
            points: src.int(&s.points, "behaviour.spend_streak.points", pts.clone())?,
        };
        let min = src.opt_int(&s.min_amount_fen, "behaviour.spend_streak.min_amount_fen", 0..=i64::MAX / 4)?;
        out.spend_streak = Some((bonus, min.unwrap_or(0)));
    }
    if let Some(t) = &b.monthly_task {
        out.monthly_task = Some((
            src.int(&t.spend_fen, "behaviour.monthly_task.spend_fen", 1..=i64::MAX / 4)?,
            src.int(&t.points, "behaviour.monthly_task.points", pts.clone())?,
        ));
    }
    if let Some(r) = &b.referral {
        out.referral_points = src.int(&r.points, "behaviour.referral.points", pts.clone())?;
        out.referral_max_per_month = src.int(&r.max_per_month, "behaviour.referral.max_per_month", 1..=10_000)?;
        out.referral_max_total = src.opt_int(&r.max_total, "behaviour.referral.max_total", 1..=1_000_000)?;
    }
    if let Some(r) = &b.review {
        out.review_points = src.int(&r.points, "behaviour.review.points", pts)?;
        out.review_max_per_day = src.int(&r.max_per_day, "behaviour.review.max_per_day", 1..=1_000)?;
    }
    Ok(out)
}

fn load_wallet(
    src: &Source,
    raw: Option<&RawWallet>,
    bus: &HashMap<String, BusinessUnit>,
) -> CoreResult<WalletRules> {
    let Some(w) = raw else { return Ok(WalletRules::default()) };
    let rate = |r: &RawRedemptionRate, field: &str| -> CoreResult<RedemptionRate> {
        Ok(RedemptionRate {
            points: src.int(&r.points, &format!("{field}.points"), 1..=1_000_000)?,
            value_fen: src.int(&r.value_fen, &format!("{field}.value_fen"), 1..=1_000_000)?,
        })
    };
    let mut out = WalletRules {
        validity_months: src.opt_int(&w.validity_months, "wallet.validity_months", 1..=240)?,
        reminder_days: src.opt_int(&w.reminder_days, "wallet.reminder_days", 1..=365)?,
        shortfall: w.refund_shortfall.unwrap_or(Shortfall::AllowNegative),
        lottery_cost_points: src.opt_int(&w.lottery_cost_points, "wallet.lottery_cost_points", 1..=10_000_000)?.unwrap_or(0),
        ..WalletRules::default()
    };
    if let Some(d) = &w.default_rate {
        out.default_rate = rate(d, "wallet.default_rate")?;
    }
    for (i, r) in w.bu_rates.iter().enumerate() {
        let field = format!("wallet.bu_rates[{i}]");
        if !bus.contains_key(r.bu.get_ref()) {
            return src.err(r.bu.span(), &format!("{field}.bu"), format!("unknown business unit {:?}", r.bu.get_ref()));
        }
        let rr = rate(&RawRedemptionRate { points: r.points.clone(), value_fen: r.value_fen.clone() }, &field)?;
        out.rates_by_bu.insert(r.bu.get_ref().clone(), rr);
    }
    Ok(out)
}

fn load_settlement(
    src: &Source,
    raw: Option<&RawSettlement>,
    bus: &HashMap<String, BusinessUnit>,
) -> CoreResult<SettlementRules> {
    let Some(r) = raw else { return Ok(SettlementRules::default()) };
    let fen = 0..=1_000_000;
    let mut out = SettlementRules {
        default_fund_fen_per_100: src
            .opt_int(&r.default_fund_fen_per_100, "settlement.default_fund_fen_per_100", fen.clone())?
            .unwrap_or(100),
        default_commission_bp: src.opt_int(&r.default_commission_bp, "settlement.default_commission_bp", 0..=10_000)?.unwrap_or(0),
        breakage_fen_per_100: src.opt_int(&r.breakage_fen_per_100, "settlement.breakage_fen_per_100", fen.clone())?.unwrap_or(100),
        ..SettlementRules::default()
    };
    if let Some(mode) = &r.split_rounding {
        out.split_rounding = match mode.get_ref().as_str() {
            "half_up" => crate::settlement::Rounding::HalfUp,
            "floor" => crate::settlement::Rounding::Floor,
            _ => return src.err(mode.span(), "settlement.split_rounding", "must be \"half_up\" or \"floor\""),
        };
    }
    if let Some(to) = &r.breakage_to {
        if to.get_ref() != "pool" && !bus.contains_key(to.get_ref()) {
            return src.err(to.span(), "settlement.breakage_to", "must be \"pool\" or a business unit id");
        }
        out.breakage_to = to.get_ref().clone();
    }
    for (i, b) in r.bus.iter().enumerate() {
        let field = format!("settlement.bus[{i}]");
        if !bus.contains_key(b.bu.get_ref()) {
            return src.err(b.bu.span(), &format!("{field}.bu"), format!("unknown business unit {:?}", b.bu.get_ref()));
        }
        if let Some(v) = src.opt_int(&b.fund_fen_per_100, &format!("{field}.fund_fen_per_100"), fen.clone())? {
            out.fund_fen_per_100.insert(b.bu.get_ref().clone(), v);
        }
        if let Some(v) = src.opt_int(&b.paid_fen_per_100, &format!("{field}.paid_fen_per_100"), fen.clone())? {
            out.paid_fen_per_100.insert(b.bu.get_ref().clone(), v);
        }
    }
    Ok(out)
}

fn load_coupon_template(
    src: &Source,
    i: usize,
    t: &RawCouponTemplate,
    bus: &HashMap<String, BusinessUnit>,
) -> CoreResult<crate::coupon_rules::CouponTemplate> {
    use crate::coupon_rules::{CouponKind, CouponTemplate, Scope, Validity};
    let f = |name: &str| format!("coupon_templates[{i}].{name}");
    let id = src.id(&t.id, &f("id"))?;
    let money = 1..=100_000_000;
    let need = |v: &Option<S<i64>>, name: &str, range: std::ops::RangeInclusive<i64>| -> CoreResult<i64> {
        match v {
            Some(v) => src.int(v, &f(name), range),
            None => src.err(t.kind.span(), &f(name), format!("is required for kind {:?}", t.kind.get_ref())),
        }
    };
    let kind = match t.kind.get_ref().as_str() {
        "percent_off" => CouponKind::PercentOff {
            pct: need(&t.percent_off, "percent_off", 1..=99)?,
            max_off_fen: src.opt_int(&t.max_off_fen, &f("max_off_fen"), money.clone())?.unwrap_or(0),
        },
        "amount_off" => CouponKind::AmountOff { off_fen: need(&t.amount_off_fen, "amount_off_fen", money.clone())? },
        "item" => CouponKind::Item {
            item: match &t.item {
                Some(v) => src.id(v, &f("item"))?,
                None => return src.err(t.kind.span(), &f("item"), "is required for kind \"item\""),
            },
            value_fen: src.opt_int(&t.item_value_fen, &f("item_value_fen"), 0..=100_000_000)?.unwrap_or(0),
        },
        "parking" => CouponKind::Parking { minutes: need(&t.parking_minutes, "parking_minutes", 1..=10_080)? },
        other => {
            return src.err(
                t.kind.span(),
                &f("kind"),
                format!("{other:?} is not one of percent_off, amount_off, item, parking"),
            )
        }
    };
    let instant = |v: &S<String>, name: &str| -> CoreResult<i64> {
        parse_instant_ms(v.get_ref()).or_else(|e| src.err(v.span(), &f(name), e.reason().to_string()))
    };
    let validity = match (&t.valid_days, &t.valid_from, &t.valid_to) {
        (Some(d), None, None) => Validity::Days(src.int(d, &f("valid_days"), 1..=3_650)?),
        (None, Some(a), Some(b)) => {
            let (from_ms, to_ms) = (instant(a, "valid_from")?, instant(b, "valid_to")?);
            if to_ms <= from_ms {
                return src.err(b.span(), &f("valid_to"), "must be after valid_from");
            }
            Validity::Fixed { from_ms, to_ms }
        }
        _ => return src.err(t.id.span(), &f("valid_days"), "set valid_days, or valid_from and valid_to"),
    };
    let is_bu = |x: &str| bus.contains_key(x);
    Ok(CouponTemplate {
        id,
        kind,
        threshold_fen: src.opt_int(&t.threshold_fen, &f("threshold_fen"), 0..=100_000_000_000)?.unwrap_or(0),
        validity,
        stock: src.opt_int(&t.stock, &f("stock"), 1..=1_000_000_000)?,
        per_member_limit: src.opt_int(&t.per_member_limit, &f("per_member_limit"), 1..=10_000)?,
        scope: Scope {
            bus: src.id_set(&t.bus, &f("bus"), Some(&is_bu), "business unit")?,
            merchants: src.id_set(&t.merchants, &f("merchants"), None, "merchant")?,
            categories: src.id_set(&t.categories, &f("categories"), None, "category")?,
        },
        merchant_share_pct: src.opt_int(&t.merchant_share_pct, &f("merchant_share_pct"), 0..=100)?.unwrap_or(0),
    })
}

fn load_trigger(
    src: &Source,
    i: usize,
    t: &RawTrigger,
    templates: &HashMap<String, crate::coupon_rules::CouponTemplate>,
    formats: &HashMap<String, Rate>,
    tiers: &[Tier],
) -> CoreResult<crate::coupon_rules::Trigger> {
    use crate::coupon_rules::{Trigger, TriggerKind};
    let f = |name: &str| format!("triggers[{i}].{name}");
    let id = src.id(&t.id, &f("id"))?;
    let need = |v: &Option<S<i64>>, name: &str, range: std::ops::RangeInclusive<i64>| -> CoreResult<i64> {
        match v {
            Some(v) => src.int(v, &f(name), range),
            None => src.err(t.on.span(), &f(name), format!("is required for on = {:?}", t.on.get_ref())),
        }
    };
    let is_format = |x: &str| formats.contains_key(x);
    let is_tier = |x: &str| tiers.iter().any(|t| t.id == x);
    let kind = match t.on.get_ref().as_str() {
        "register" => TriggerKind::Register,
        "win_back" => TriggerKind::WinBack { dormant_days: need(&t.dormant_days, "dormant_days", 1..=3_650)? },
        "spend" => TriggerKind::Spend { min_amount_fen: need(&t.min_amount_fen, "min_amount_fen", 1..=100_000_000_000)? },
        "spend_window" => TriggerKind::SpendWindow {
            min_total_fen: need(&t.min_total_fen, "min_total_fen", 1..=100_000_000_000)?,
            window_days: need(&t.window_days, "window_days", 1..=366)?,
        },
        "parking_exit" => TriggerKind::ParkingExit,
        "birthday_month" => TriggerKind::BirthdayMonth,
        "tier_upgrade" => TriggerKind::TierUpgrade { to: src.id_set(&t.to_tiers, &f("to_tiers"), Some(&is_tier), "tier")? },
        "points_expiring" => TriggerKind::PointsExpiring,
        "first_format" => {
            TriggerKind::FirstFormat { formats: src.id_set(&t.formats, &f("formats"), Some(&is_format), "format")? }
        }
        other => {
            return src.err(
                t.on.span(),
                &f("on"),
                format!(
                    "{other:?} is not one of register, win_back, spend, spend_window, parking_exit, \
                     birthday_month, tier_upgrade, points_expiring, first_format"
                ),
            )
        }
    };
    let coupon = src.id(&t.coupon, &f("coupon"))?;
    if !templates.contains_key(&coupon) {
        return src.err(t.coupon.span(), &f("coupon"), format!("unknown coupon template {coupon:?}"));
    }
    let cap = match (&t.max_per_member, &t.per_days) {
        (None, None) => None,
        (Some(m), d) => Some((
            src.int(m, &f("max_per_member"), 1..=10_000)?,
            src.opt_int(d, &f("per_days"), 0..=3_650)?.unwrap_or(0),
        )),
        (None, Some(d)) => return src.err(d.span(), &f("per_days"), "needs max_per_member"),
    };
    Ok(Trigger {
        id,
        kind,
        coupon,
        tiers: src.id_set(&t.tiers, &f("tiers"), Some(&is_tier), "tier")?,
        tags: src.id_set(&t.tags, &f("tags"), None, "tag")?,
        cap,
        budget: src.opt_int(&t.budget, &f("budget"), 1..=1_000_000_000)?,
    })
}
